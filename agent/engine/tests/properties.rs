//! Properties over random policies and objects: the compiled kernel entries decide exactly as
//! the engine does, the indexes agree with direct matching, and evaluation ignores rule order.

use bridle_engine::{
    compile_with_invariants, ConnectObject, Effect, Engine, ExecPattern, Mode, Object, Policy,
    RateLimit, Rule, RuleMatcher, StepOutcome, Target,
};
use proptest::prelude::*;
use std::time::Duration;

const EXEC_PATTERNS: &[&str] = &[
    "/usr/bin/git",
    "/usr/bin/curl",
    "/usr/bin/*",
    "/usr/**",
    "/opt/*/bin/x*",
    "/a/b",
    "/a/**/c",
    "/a/*",
    "/**",
    "/usr/lib/git-core/git-*",
    "/opt/tools/**",
];
const EXEC_PATHS: &[&str] = &[
    "/usr/bin/git",
    "/usr/bin/curl",
    "/usr/bin/x/y",
    "/usr/lib/git-core/git-remote",
    "/a/b",
    "/a/c",
    "/a/x/y/c",
    "/opt/p/bin/xyz",
    "/opt/tools/t",
    "/sbin/init",
    "/opt/tools",
];
const HOSTS: &[&str] = &[
    "github.com",
    "*.github.com",
    "api.github.com",
    "*.api.github.com",
    "crates.io",
    "*.io",
];
const TARGET_HOSTS: &[&str] = &[
    "github.com",
    "api.github.com",
    "x.api.github.com",
    "crates.io",
    "static.crates.io",
    "example.org",
];
const PORTS: &[&str] = &["*", "22", "80", "443", "1-1024", "443-8443", "8000-8999"];
const TARGET_PORTS: &[u16] = &[0, 1, 22, 80, 443, 1024, 8080, 8443, 65535];

fn v4_object() -> impl Strategy<Value = String> {
    (
        0u8..4,
        0u8..4,
        prop::sample::select(vec![0u8, 8, 16, 24, 30, 31, 32]),
        prop::sample::select(PORTS),
    )
        .prop_map(|(c, d, len, port)| {
            let raw = u32::from_be_bytes([10, 0, c, d]);
            let masked = if len == 0 {
                0
            } else {
                raw & (u32::MAX << (32 - u32::from(len)))
            };
            let ip = std::net::Ipv4Addr::from(masked);
            if len == 32 {
                format!("{ip}:{port}")
            } else {
                format!("{ip}/{len}:{port}")
            }
        })
}

fn v6_object() -> impl Strategy<Value = String> {
    (
        0u16..4,
        prop::sample::select(vec![0u8, 16, 32, 64, 95, 112, 128]),
        prop::sample::select(PORTS),
    )
        .prop_map(|(x, len, port)| {
            let raw = u128::from(std::net::Ipv6Addr::new(0x2001, 0xdb8, x, 0, 0, 0, 0, x));
            let masked = if len == 0 {
                0
            } else {
                raw & (u128::MAX << (128 - u32::from(len)))
            };
            format!("[{}/{len}]:{port}", std::net::Ipv6Addr::from(masked))
        })
}

fn connect_object() -> impl Strategy<Value = ConnectObject> {
    prop_oneof![
        4 => v4_object(),
        2 => v6_object(),
        2 => (prop::sample::select(HOSTS), prop::sample::select(PORTS)).prop_map(|(h, p)| format!("{h}:{p}")),
        1 => prop::sample::select(vec!["unix:/run/a.sock", "unix:@bus", "unix:/run/b.sock", "unix:/run/../run/a.sock"]).prop_map(String::from),
        1 => Just("raw".to_string()),
        1 => (0u8..4, prop::sample::select(PORTS)).prop_map(|(d, p)| format!("[::ffff:10.0.0.{d}]:{p}")),
    ]
    .prop_map(|s| ConnectObject::parse(&s).unwrap_or_else(|e| panic!("{s}: {e}")))
}

fn matcher() -> impl Strategy<Value = RuleMatcher> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(EXEC_PATTERNS), 1..4).prop_map(|ps| {
            RuleMatcher::Exec(
                ps.into_iter()
                    .map(|p| ExecPattern::parse(p).unwrap())
                    .collect(),
            )
        }),
        prop::collection::vec(connect_object(), 1..5).prop_map(RuleMatcher::Connect),
    ]
}

fn rules(prefix: &'static str, refuse_only: bool) -> impl Strategy<Value = Vec<Rule>> {
    prop::collection::vec((any::<bool>(), any::<bool>(), matcher(), 0u32..1000), 0..10).prop_map(
        move |rs| {
            rs.into_iter()
                .enumerate()
                .map(|(i, (refuse, limited, matcher, salt))| {
                    let effect = if refuse || refuse_only {
                        Effect::Refuse
                    } else {
                        Effect::Permit
                    };
                    Rule {
                        // Names sort differently from file order, so precedence by name is tested.
                        name: format!("{prefix}{}-{i}", salt % 7),
                        effect,
                        matcher,
                        rate_limit: (limited && effect == Effect::Permit).then_some(RateLimit {
                            max: 1,
                            per: Duration::from_secs(1),
                        }),
                    }
                })
                .collect()
        },
    )
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        rules("r", false),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(rules, permit, observe, anon)| Policy {
            name: "prop".into(),
            version: Some(1),
            mode: if observe {
                Mode::Observe
            } else {
                Mode::Enforce
            },
            default: if permit {
                Effect::Permit
            } else {
                Effect::Refuse
            },
            permit_ttl: Duration::from_secs(600),
            allow_anonymous_exec: anon,
            rules,
            quarantine: None,
        })
}

fn object() -> impl Strategy<Value = Object> {
    let v4 = (
        0u8..4,
        0u8..4,
        prop::sample::select(TARGET_PORTS),
        any::<bool>(),
    )
        .prop_map(|(c, d, port, mapped)| {
            let ip = std::net::Ipv4Addr::new(10, 0, c, d);
            let addr = if mapped {
                std::net::SocketAddr::new(ip.to_ipv6_mapped().into(), port)
            } else {
                std::net::SocketAddr::new(ip.into(), port)
            };
            Target::Addr(addr)
        });
    let v6 = (0u16..4, 0u16..3, prop::sample::select(TARGET_PORTS)).prop_map(|(x, y, port)| {
        Target::Addr(std::net::SocketAddr::new(
            std::net::Ipv6Addr::new(0x2001, 0xdb8, x, 0, 0, 0, 0, y).into(),
            port,
        ))
    });
    prop_oneof![
        3 => prop::sample::select(EXEC_PATHS).prop_map(|p| Object::Exec(p.into())),
        1 => Just(Object::AnonymousExec("memfd:x".into())),
        3 => v4.prop_map(Object::Connect),
        2 => v6.prop_map(Object::Connect),
        2 => (prop::sample::select(TARGET_HOSTS), prop::sample::select(TARGET_PORTS))
            .prop_map(|(h, port)| Object::Connect(Target::Host { name: h.into(), port })),
        1 => prop::sample::select(vec!["unix:/run/a.sock", "unix:@bus", "unix:/run/c.sock", "raw", "unix:/run/../run/a.sock", "unix://run/a.sock"])
            .prop_map(|t| Object::Connect(Target::parse(t).unwrap())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn compiled_entries_decide_like_the_engine(p in policy(), inv in rules("i", true), objects in prop::collection::vec(object(), 1..16)) {
        let compiled = compile_with_invariants(&p, &inv);
        let engine = Engine::new(p).with_invariants(inv);
        for o in &objects {
            let v = engine.judge(o);
            let k = compiled.lookup(o);
            let k_rule = k.rule.map(|r| compiled.rules[r.0 as usize].name.clone());
            prop_assert_eq!((v.effect, v.code, v.rule.clone()), (k.effect, k.code, k_rule), "object {:?}", o);
            // IPv4 addresses give the same answer through the IPv6 map as mapped addresses.
            if let Object::Connect(Target::Addr(sa)) = o {
                if let std::net::IpAddr::V4(ip) = sa.ip() {
                    let mapped = Object::Connect(Target::Addr(std::net::SocketAddr::new(ip.to_ipv6_mapped().into(), sa.port())));
                    prop_assert_eq!(compiled.lookup(&mapped), k);
                }
            }
        }
    }

    #[test]
    fn indexes_agree_with_direct_matching(p in policy(), objects in prop::collection::vec(object(), 1..16)) {
        let engine = Engine::new(p.clone());
        for o in &objects {
            let v = engine.explain(o);
            let matched: Vec<&str> = v.trace.iter()
                .filter(|s| matches!(s.outcome, StepOutcome::Matched { .. }))
                .map(|s| s.rule.as_str())
                .collect();
            let refuse_matched = p.rules.iter().any(|r| r.effect == Effect::Refuse && matched.contains(&r.name.as_str()));
            let permit_matched = p.rules.iter().any(|r| r.effect == Effect::Permit && matched.contains(&r.name.as_str()));
            if let Some(rule) = &v.rule {
                prop_assert!(matched.contains(&rule.as_str()), "{rule} not matched in trace for {o:?}");
            } else if !matches!(o, Object::AnonymousExec(_)) {
                prop_assert!(!refuse_matched && !permit_matched, "{o:?}: rules matched but default decided");
            }
            let would = v.observed.as_deref().unwrap_or(&v);
            if refuse_matched {
                prop_assert_eq!(would.effect, Effect::Refuse);
            }
        }
    }

    #[test]
    fn rule_and_pattern_order_change_neither_verdict_nor_digest(p in policy(), objects in prop::collection::vec(object(), 1..8)) {
        let mut shuffled = p.clone();
        shuffled.rules.reverse();
        for r in &mut shuffled.rules {
            match &mut r.matcher {
                RuleMatcher::Exec(v) => v.reverse(),
                RuleMatcher::Connect(v) => v.reverse(),
            }
        }
        prop_assert_eq!(p.digest(), shuffled.digest());
        let (a, b) = (Engine::new(p), Engine::new(shuffled));
        for o in &objects {
            let (va, vb) = (a.judge(o), b.judge(o));
            prop_assert_eq!((va.effect, va.code, va.rule), (vb.effect, vb.code, vb.rule));
        }
    }
}
