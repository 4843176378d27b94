//! Evaluation: the verdict model of the design, rule by rule.

use bridle_engine::{
    Code, Effect, Engine, Invariants, ManualClock, Object, Policy, QuarantineAction, StepOutcome,
    Target,
};
use std::sync::Arc;
use std::time::Duration;

fn policy(src: &str) -> Policy {
    Policy::parse(src, "t.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn exec(p: &str) -> Object {
    Object::Exec(p.into())
}

fn conn(t: &str) -> Object {
    Object::Connect(Target::parse(t).unwrap())
}

const BASE: &str = r#"
name = "base"
version = 2
[[rule]]
name = "tools"
effect = "permit"
exec = ["/usr/bin/*", "/opt/tools/**"]
[[rule]]
name = "no-curl"
effect = "refuse"
exec = ["/usr/bin/curl"]
[[rule]]
name = "net"
effect = "permit"
connect = ["*.github.com:443", "github.com:443", "10.0.0.0/8:*", "[2001:db8::/32]:443",
           "127.0.0.1:8000-8999", "unix:/run/app.sock", "unix:@bus"]
[[rule]]
name = "no-db"
effect = "refuse"
connect = ["10.1.0.0/16:5432"]
"#;

#[test]
fn refuse_overrides_permit_and_names_both() {
    let e = Engine::new(policy(BASE));
    let v = e.judge(&exec("/usr/bin/curl"));
    assert_eq!((v.effect, v.code), (Effect::Refuse, Code::PolicyRefused));
    assert_eq!(v.rule.as_deref(), Some("no-curl"));
    assert!(
        v.reason.contains("refuse overrides permit rule \"tools\""),
        "{}",
        v.reason
    );
    assert!(
        v.hint.contains("remove the pattern \"/usr/bin/curl\""),
        "{}",
        v.hint
    );
    assert_eq!(v.policy.name, "base");
    assert_eq!(v.policy.version, Some(2));
    assert_eq!(v.policy.digest.len(), 64);
}

#[test]
fn rule_order_does_not_matter() {
    let reversed = {
        let mut p = policy(BASE);
        p.rules.reverse();
        p
    };
    let (a, b) = (Engine::new(policy(BASE)), Engine::new(reversed));
    for o in [
        exec("/usr/bin/curl"),
        exec("/usr/bin/git"),
        conn("10.1.2.3:5432"),
        conn("10.1.2.3:80"),
    ] {
        let (va, vb) = (a.judge(&o), b.judge(&o));
        assert_eq!((va.effect, va.code, va.rule), (vb.effect, vb.code, vb.rule));
    }
}

#[test]
fn default_decides_when_nothing_matches() {
    let e = Engine::new(policy(BASE));
    let v = e.judge(&exec("/sbin/reboot"));
    assert_eq!(
        (v.effect, v.code, v.rule.as_deref()),
        (Effect::Refuse, Code::NoMatchingRule, None)
    );
    assert!(
        v.hint.contains(
            "add \"/sbin/reboot\" to the exec list of a permit rule, e.g. rule \"tools\""
        ),
        "{}",
        v.hint
    );
    let open = Engine::new(policy("name = \"open\"\ndefault = \"permit\""));
    let v = open.judge(&exec("/sbin/reboot"));
    assert_eq!((v.effect, v.code), (Effect::Permit, Code::NoMatchingRule));
    let empty = Engine::new(policy("name = \"empty\""));
    assert_eq!(empty.judge(&conn("1.1.1.1:53")).effect, Effect::Refuse);
}

#[test]
fn exec_patterns() {
    let e = Engine::new(policy(BASE));
    assert_eq!(e.judge(&exec("/usr/bin/git")).code, Code::Permitted);
    assert_eq!(e.judge(&exec("/usr/bin/x/git")).code, Code::NoMatchingRule);
    assert_eq!(e.judge(&exec("/opt/tools/a/b/c")).code, Code::Permitted);
    assert_eq!(e.judge(&exec("/opt/tools")).code, Code::NoMatchingRule);
    assert_eq!(e.judge(&exec("/usr//bin/git")).code, Code::Permitted);
    assert_eq!(e.judge(&exec("usr/bin/git")).code, Code::NoMatchingRule);
}

#[test]
fn connect_objects() {
    let e = Engine::new(policy(BASE));
    let code = |t: &str| e.judge(&conn(t)).code;
    assert_eq!(code("api.github.com:443"), Code::Permitted);
    assert_eq!(code("API.GitHub.com.:443"), Code::Permitted);
    assert_eq!(code("github.com:443"), Code::Permitted);
    assert_eq!(code("evilgithub.com:443"), Code::NameNotAllowed);
    assert_eq!(code("api.github.com:80"), Code::NameNotAllowed);
    assert_eq!(code("10.9.9.9:22"), Code::Permitted);
    assert_eq!(code("10.1.9.9:5432"), Code::PolicyRefused);
    assert_eq!(code("[::ffff:10.1.9.9]:5432"), Code::PolicyRefused);
    assert_eq!(code("[::ffff:10.9.9.9]:22"), Code::Permitted);
    assert_eq!(code("[2001:db8::1]:443"), Code::Permitted);
    assert_eq!(code("[2001:db9::1]:443"), Code::NoMatchingRule);
    assert_eq!(code("127.0.0.1:8080"), Code::Permitted);
    assert_eq!(code("127.0.0.1:9000"), Code::NoMatchingRule);
    assert_eq!(code("unix:/run/app.sock"), Code::Permitted);
    assert_eq!(code("unix:@bus"), Code::Permitted);
    assert_eq!(code("unix:/run/other.sock"), Code::NoMatchingRule);
    assert_eq!(code("raw"), Code::NoMatchingRule);
}

#[test]
fn a_non_canonical_unix_path_is_refused_unless_a_rule_names_that_spelling() {
    let p = policy(
        r#"
name = "sockets"
default = "permit"
[[rule]]
name = "no-docker"
effect = "refuse"
connect = ["unix:/run/docker.sock"]
[[rule]]
name = "odd"
effect = "permit"
connect = ["unix:/run//odd.sock"]
"#,
    );
    let e = Engine::new(p.clone());
    assert_eq!(
        e.judge(&conn("unix:/run/docker.sock")).effect,
        Effect::Refuse
    );
    assert_eq!(
        e.judge(&conn("unix:/run/other.sock")).effect,
        Effect::Permit
    );
    for spelling in [
        "unix://run/docker.sock",
        "unix:/run/./docker.sock",
        "unix:/run/../run/docker.sock",
        "unix:/run/docker.sock/",
    ] {
        let v = e.judge(&conn(spelling));
        assert_eq!(
            (v.effect, v.code, v.rule.as_deref()),
            (Effect::Refuse, Code::NoMatchingRule, None),
            "{spelling}"
        );
        assert!(
            v.reason.contains("not a canonical socket path"),
            "{}",
            v.reason
        );
        assert!(v.hint.contains("canonical path"), "{}", v.hint);
    }
    // A relative path, as the kernel may see one.
    let v = e.judge(&Object::Connect(Target::Unix("run/docker.sock".into())));
    assert_eq!(v.effect, Effect::Refuse);
    // A rule that names the spelling decides it, and the kernel model agrees throughout.
    assert_eq!(e.judge(&conn("unix:/run//odd.sock")).code, Code::Permitted);
    let compiled = bridle_engine::compile(&p);
    for t in ["unix:/run//odd.sock", "unix:/run/./docker.sock", "unix:@x"] {
        let v = e.judge(&conn(t));
        let k = compiled.lookup(&conn(t));
        assert_eq!((v.effect, v.code), (k.effect, k.code), "{t}");
    }
    // Observe mode lets it through and says what it would have done.
    let mut observed = p;
    observed.mode = bridle_engine::Mode::Observe;
    let v = Engine::new(observed).judge(&conn("unix:/run/./docker.sock"));
    assert_eq!((v.effect, v.code), (Effect::Permit, Code::Observed));
}

#[test]
fn one_unix_entry_per_address_and_the_refusal_decides() {
    let p = policy(
        r#"
name = "sockets"
[[rule]]
name = "allow"
effect = "permit"
connect = ["unix:/run/a.sock", "unix:@bus"]
[[rule]]
name = "deny"
effect = "refuse"
connect = ["unix:/run/a.sock"]
"#,
    );
    let compiled = bridle_engine::compile(&p);
    let a: Vec<_> = compiled
        .unix
        .iter()
        .filter(|u| u.path == "/run/a.sock")
        .collect();
    assert_eq!(a.len(), 1, "{:?}", compiled.unix);
    assert_eq!(a[0].effect, Effect::Refuse);
    assert_eq!(compiled.rules[a[0].rule.0 as usize].name, "deny");
    assert_eq!(compiled.unix.len(), 2);
}

#[test]
fn invariants_cannot_be_overridden() {
    let inv = Invariants::parse(
        "[[rule]]\nname = \"no-git\"\nexec = [\"/usr/bin/git\"]\n",
        "i.toml",
    )
    .unwrap();
    let e = Engine::new(policy(BASE)).with_invariants(inv.rules);
    let v = e.judge(&exec("/usr/bin/git"));
    assert_eq!(
        (v.effect, v.code, v.rule.as_deref()),
        (Effect::Refuse, Code::Invariant, Some("no-git"))
    );
    assert_eq!(v.policy.name, "invariants");
    assert!(v
        .hint
        .contains("invariant \"no-git\" blocks it; no policy can override an invariant"));
    // Even an observing policy does not lift an invariant.
    let inv = Invariants::parse(
        "[[rule]]\nname = \"no-git\"\nexec = [\"/usr/bin/git\"]\n",
        "i.toml",
    )
    .unwrap();
    let e = Engine::new(policy(
        "name = \"o\"\nmode = \"observe\"\ndefault = \"permit\"",
    ))
    .with_invariants(inv.rules);
    assert_eq!(e.judge(&exec("/usr/bin/git")).code, Code::Invariant);
}

#[test]
fn nested_policies_all_must_permit() {
    let inner = policy("name = \"inner\"\n[[rule]]\nname = \"git\"\neffect = \"permit\"\nexec = [\"/usr/bin/git\", \"/usr/bin/curl\"]\n");
    let e = Engine::new(policy(BASE)).nested(inner);
    assert_eq!(e.policy().name, "inner");
    let v = e.judge(&exec("/usr/bin/git"));
    assert_eq!((v.code, v.policy.name.as_str()), (Code::Permitted, "inner"));
    let v = e.judge(&exec("/usr/bin/ls"));
    assert_eq!(
        (v.code, v.policy.name.as_str()),
        (Code::NoMatchingRule, "inner")
    );
    let v = e.judge(&exec("/usr/bin/curl"));
    assert_eq!(
        (v.code, v.policy.name.as_str()),
        (Code::PolicyRefused, "base")
    );
}

#[test]
fn observe_mode_records_what_would_be_refused() {
    let src = BASE.replace("name = \"base\"", "name = \"base\"\nmode = \"observe\"");
    let e = Engine::new(policy(&src));
    let v = e.judge(&exec("/usr/bin/curl"));
    assert_eq!(
        (v.effect, v.code, v.rule.as_deref()),
        (Effect::Permit, Code::Observed, Some("no-curl"))
    );
    let would = v.observed.expect("observed verdict");
    assert_eq!(
        (would.effect, would.code),
        (Effect::Refuse, Code::PolicyRefused)
    );
    assert_eq!(e.judge(&exec("/usr/bin/git")).code, Code::Permitted);
    // An enforcing inner policy still refuses.
    let e = Engine::new(policy(&src)).nested(policy("name = \"inner\""));
    assert_eq!(e.judge(&exec("/usr/bin/git")).effect, Effect::Refuse);
}

#[test]
fn rate_limits_use_the_injected_clock() {
    let clock = Arc::new(ManualClock::new());
    let p = policy("name = \"r\"\n[[rule]]\nname = \"api\"\neffect = \"permit\"\nconnect = [\"1.2.3.4:443\"]\nrate_limit = { max = 2, per = \"1m\" }\n");
    let mut e = Engine::new(p).with_clock(clock.clone());
    let o = conn("1.2.3.4:443");
    assert_eq!(e.evaluate(&o).code, Code::Permitted);
    assert_eq!(e.evaluate(&o).code, Code::Permitted);
    let v = e.evaluate(&o);
    assert_eq!(
        (v.effect, v.code, v.rule.as_deref()),
        (Effect::Refuse, Code::RateLimited, Some("api"))
    );
    assert!(v.hint.contains("rate_limit"));
    // judge is stateless.
    assert_eq!(e.judge(&o).code, Code::Permitted);
    clock.advance(Duration::from_secs(60));
    assert_eq!(e.evaluate(&o).code, Code::Permitted);
}

#[test]
fn unlimited_permit_is_preferred_over_a_limited_one() {
    let p = policy("name = \"r\"\n[[rule]]\nname = \"a-limited\"\neffect = \"permit\"\nconnect = [\"1.2.3.4:443\"]\nrate_limit = { max = 1, per = \"1m\" }\n[[rule]]\nname = \"b-open\"\neffect = \"permit\"\nconnect = [\"1.2.3.0/24:*\"]\n");
    let mut e = Engine::new(p).with_clock(Arc::new(ManualClock::new()));
    for _ in 0..3 {
        assert_eq!(
            e.evaluate(&conn("1.2.3.4:443")).rule.as_deref(),
            Some("b-open")
        );
    }
}

#[test]
fn quarantine_invalidates_then_refuses_everything() {
    let clock = Arc::new(ManualClock::new());
    let p = policy(&format!(
        "{BASE}\n[quarantine]\nafter_refusals = 3\nwithin = \"1m\"\naction = \"kill\"\n"
    ));
    let mut e = Engine::new(p).with_clock(clock.clone());
    assert_eq!(e.evaluate(&exec("/usr/bin/curl")).effect, Effect::Refuse);
    clock.advance(Duration::from_secs(61));
    assert_eq!(e.evaluate(&exec("/usr/bin/curl")).effect, Effect::Refuse);
    assert_eq!(e.evaluate(&exec("/usr/bin/curl")).effect, Effect::Refuse);
    let v = e.evaluate(&exec("/usr/bin/curl"));
    assert_eq!((v.effect, v.code), (Effect::Invalidate, Code::Quarantined));
    assert_eq!(v.quarantine, Some(QuarantineAction::Kill));
    assert_eq!(e.quarantined(), Some(QuarantineAction::Kill));
    let v = e.evaluate(&exec("/usr/bin/git"));
    assert_eq!((v.effect, v.code), (Effect::Refuse, Code::Quarantined));
    e.lift_quarantine();
    assert_eq!(e.evaluate(&exec("/usr/bin/git")).code, Code::Permitted);
}

#[test]
fn refusals_enforced_elsewhere_count_towards_quarantine() {
    let clock = Arc::new(ManualClock::new());
    let p = policy(&format!(
        "{BASE}\n[quarantine]\nafter_refusals = 2\nwithin = \"1m\"\naction = \"freeze\"\n"
    ));
    let mut e = Engine::new(p).with_clock(clock.clone());
    assert!(e
        .count_enforced_refusal(None, "connect 10.0.0.1:80")
        .is_none());
    clock.advance(Duration::from_secs(61));
    assert!(e
        .count_enforced_refusal(None, "connect 10.0.0.1:80")
        .is_none());
    let v = e
        .count_enforced_refusal(Some("no-curl".into()), "exec /usr/bin/curl")
        .expect("the second refusal within a minute quarantines");
    assert_eq!((v.effect, v.code), (Effect::Invalidate, Code::Quarantined));
    assert_eq!(v.quarantine, Some(QuarantineAction::Freeze));
    assert_eq!(v.rule.as_deref(), Some("no-curl"));
    assert!(v.reason.contains("exec /usr/bin/curl"), "{}", v.reason);
    assert!(e.count_enforced_refusal(None, "again").is_none());
    assert_eq!(e.quarantined(), Some(QuarantineAction::Freeze));
}

#[test]
fn anonymous_exec() {
    let e = Engine::new(policy(BASE));
    let v = e.judge(&Object::AnonymousExec("memfd:x (deleted)".into()));
    assert_eq!((v.effect, v.code), (Effect::Refuse, Code::AnonymousExec));
    let e = Engine::new(policy("name = \"a\"\nallow_anonymous_exec = true"));
    assert_eq!(
        e.judge(&Object::AnonymousExec("memfd:x".into())).effect,
        Effect::Permit
    );
}

#[test]
fn explain_traces_every_rule() {
    let e = Engine::new(policy(BASE));
    let v = e.explain(&exec("/usr/bin/curl"));
    assert_eq!(v.trace.len(), 4);
    let outcome = |name: &str| {
        v.trace
            .iter()
            .find(|s| s.rule == name)
            .map(|s| s.outcome.clone())
    };
    assert_eq!(
        outcome("tools"),
        Some(StepOutcome::Matched {
            pattern: "/usr/bin/*".into()
        })
    );
    assert_eq!(
        outcome("no-curl"),
        Some(StepOutcome::Matched {
            pattern: "/usr/bin/curl".into()
        })
    );
    assert_eq!(outcome("net"), Some(StepOutcome::NotApplicable));
    let v = e.explain(&conn("10.1.0.1:80"));
    assert_eq!(
        v.trace
            .iter()
            .find(|s| s.rule == "no-db")
            .map(|s| s.outcome.clone()),
        Some(StepOutcome::NotMatched)
    );
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["code"], "PERMITTED");
    assert_eq!(json["trace"][0]["outcome"]["kind"], "not_applicable");
}

#[test]
fn verdict_is_deterministic() {
    let e = Engine::new(policy(BASE));
    for o in [
        exec("/usr/bin/curl"),
        conn("10.1.2.3:5432"),
        conn("a.github.com:443"),
    ] {
        assert_eq!(e.judge(&o), e.judge(&o));
        assert_eq!(e.explain(&o), e.explain(&o));
    }
}

#[test]
fn an_engine_built_with_its_compiled_form_is_the_engine_and_compile_of_new() {
    // Large enough that the digest is computed on a second thread.
    let mut src = String::from(BASE);
    for i in 0..1200 {
        src.push_str(&format!(
            "[[rule]]\nname = \"host-{i}\"\neffect = \"permit\"\nconnect = [\"10.9.{}.{}:443\"]\n",
            i / 256,
            i % 256
        ));
    }
    let invariants = Invariants::parse(
        "[[rule]]\nname = \"no-shadow\"\nexec = [\"/usr/bin/shadow\"]\n",
        "inv.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .rules;
    let plain = Engine::new(policy(&src)).with_invariants(invariants.clone());
    let (built, compiled) = Engine::with_compiled(policy(&src), invariants);
    assert_eq!(plain.compile(), vec![compiled.clone()]);
    assert_eq!(compiled.policy.digest, policy(&src).digest_hex());
    for object in [
        exec("/usr/bin/git"),
        exec("/usr/bin/curl"),
        exec("/usr/bin/shadow"),
        conn("10.9.3.1:443"),
        conn("10.9.3.1:444"),
        conn("10.1.2.3:5432"),
    ] {
        assert_eq!(built.judge(&object), plain.judge(&object), "{object:?}");
    }
}
