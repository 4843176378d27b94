//! Parsing: valid policies load; each kind of malformed policy is rejected with its position.

use bridle_engine::{Effect, Invariants, Mode, Policy, RuleMatcher};
use std::time::Duration;

const FULL: &str = r#"
name = "coding-agent"
version = 3
mode = "observe"
default = "permit"
permit_ttl = "5m"
allow_anonymous_exec = true

[[rule]]
name = "toolchain"
effect = "permit"
exec = ["/usr/bin/git", "/usr/lib/git-core/*", "/opt/tools/**"]

[[rule]]
name = "model-api"
effect = "permit"
connect = ["api.anthropic.com:443", "*.github.com:443", "10.0.0.0/8:5432",
           "[2001:db8::/32]:443", "127.0.0.1:8000-8999", "unix:/run/app.sock"]
rate_limit = { max = 100, per = "1m" }

[quarantine]
after_refusals = 20
within = "1m"
action = "freeze"
"#;

fn errors(src: &str) -> Vec<String> {
    match Policy::parse(src, "p.toml") {
        Ok(p) => panic!("accepted: {p:?}"),
        Err(e) => e.diagnostics.iter().map(|d| d.to_string()).collect(),
    }
}

fn one_error(src: &str, expect_pos: &str, expect_text: &str) {
    let errs = errors(src);
    assert!(
        errs.iter()
            .any(|e| e.starts_with(&format!("p.toml:{expect_pos}: error: "))
                && e.contains(expect_text)),
        "wanted {expect_pos} {expect_text:?}, got {errs:#?}"
    );
}

#[test]
fn parses_the_design_example() {
    let p = Policy::parse(FULL, "p.toml").unwrap();
    assert_eq!(p.name, "coding-agent");
    assert_eq!(p.version, Some(3));
    assert_eq!(p.mode, Mode::Observe);
    assert_eq!(p.default, Effect::Permit);
    assert_eq!(p.permit_ttl, Duration::from_secs(300));
    assert!(p.allow_anonymous_exec);
    assert_eq!(p.rules.len(), 2);
    assert!(matches!(&p.rules[0].matcher, RuleMatcher::Exec(v) if v.len() == 3));
    assert!(matches!(&p.rules[1].matcher, RuleMatcher::Connect(v) if v.len() == 6));
    assert_eq!(p.rules[1].rate_limit.map(|l| l.max), Some(100));
    assert_eq!(p.quarantine.map(|q| q.after_refusals), Some(20));
}

#[test]
fn defaults_and_empty_rule_set() {
    let p = Policy::parse("name = \"x\"", "p.toml").unwrap();
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.default, Effect::Refuse);
    assert_eq!(p.permit_ttl, Duration::from_secs(600));
    assert!(!p.allow_anonymous_exec);
    assert!(p.rules.is_empty());
}

#[test]
fn inline_rule_tables_are_accepted() {
    let p = Policy::parse(
        "name = \"x\"\nrule = [{ name = \"a\", effect = \"permit\", exec = [\"/bin/sh\"] }]",
        "p.toml",
    )
    .unwrap();
    assert_eq!(p.rules.len(), 1);
}

#[test]
fn each_malformation_is_located() {
    one_error("name = \"x\"\ncolour = 1\n", "2:1", "unknown key `colour`");
    one_error(
        "name = 3\n",
        "1:8",
        "`name` must be a string, found an integer",
    );
    one_error("name = \"\"\n", "1:8", "empty name");
    one_error("name = \"Bad Name\"\n", "1:8", "bad name");
    one_error("version = 1\n", "1:1", "missing required key `name`");
    one_error("name = \"x\"\nversion = -1\n", "2:11", "non-negative");
    one_error("name = \"x\"\nmode = \"loud\"\n", "2:8", "bad mode");
    one_error("name = \"x\"\ndefault = \"maybe\"\n", "2:11", "bad default");
    one_error(
        "name = \"x\"\npermit_ttl = \"10\"\n",
        "2:14",
        "bad duration",
    );
    one_error(
        "name = \"x\"\npermit_ttl = \"1d\"\n",
        "2:14",
        "bad duration",
    );
    one_error(
        "name = \"x\"\nallow_anonymous_exec = \"yes\"\n",
        "2:24",
        "a boolean",
    );
    let rule = |body: &str| format!("name = \"x\"\n[[rule]]\n{body}");
    one_error(
        &rule("name = \"a\"\neffect = \"permit\"\nexec = [\"bin/sh\"]\n"),
        "5:9",
        "not an absolute path",
    );
    one_error(
        &rule("name = \"a\"\neffect = \"permit\"\nconnect = [\"10.0.0.1/8:80\"]\n"),
        "5:12",
        "bad CIDR",
    );
    one_error(
        &rule("name = \"a\"\neffect = \"permit\"\nconnect = [\"300.0.0.1:80\"]\n"),
        "5:12",
        "bad IPv4 address",
    );
    one_error(
        &rule("name = \"a\"\neffect = \"permit\"\nconnect = [\"1.2.3.4:0\"]\n"),
        "5:12",
        "port 0",
    );
    one_error(
        &rule("name = \"a\"\neffect = \"permit\"\nconnect = [\"1.2.3.4:65536\"]\n"),
        "5:12",
        "out of range",
    );
    one_error(
        &rule("name = \"a\"\neffect = \"permit\"\nconnect = [\"1.2.3.4:90-80\"]\n"),
        "5:12",
        "inverted port range",
    );
    one_error(
        &rule("name = \"a\"\neffect = \"permit\"\nexec = [\"/a\"]\nconnect = [\"raw\"]\n"),
        "6:1",
        "both `exec` and `connect`",
    );
    one_error(
        &rule("name = \"a\"\neffect = \"permit\"\n"),
        "2:1",
        "neither `exec` nor `connect`",
    );
    one_error(&rule("name = \"a\"\neffect = \"refuse\"\nexec = [\"/a\"]\nrate_limit = { max = 1, per = \"1s\" }\n"), "6:1", "only allowed on permit rules");
    one_error(&rule("name = \"a\"\neffect = \"permit\"\nexec = [\"/a\"]\nrate_limit = { max = 1, per = \"1 s\" }\n"), "6:31", "bad duration");
    one_error(
        &rule("name = \"a\"\neffect = \"permit\"\nexec = []\n"),
        "5:8",
        "empty",
    );
    one_error(
        &rule("name = \"a\"\neffect = \"permit\"\nexec = \"/a\"\n"),
        "5:8",
        "an array of strings",
    );
    one_error(
        &rule("name = \"a\"\neffect = \"allow\"\nexec = [\"/a\"]\n"),
        "4:10",
        "bad effect",
    );
    one_error(
        &rule("name = \"\"\neffect = \"permit\"\nexec = [\"/a\"]\n"),
        "3:8",
        "empty name",
    );
    one_error(
        &rule("name = \"a\"\neffect = \"permit\"\nexec = [\"/a\"]\nbogus = 1\n"),
        "6:1",
        "unknown key `bogus`",
    );
    one_error(
        "name = \"x\"\n[[rule]]\nname = \"a\"\neffect = \"permit\"\nexec = [\"/a\"]\n[[rule]]\nname = \"a\"\neffect = \"permit\"\nexec = [\"/b\"]\n",
        "7:8",
        "duplicate rule name \"a\" (first defined on line 3)",
    );
    one_error(
        "name = \"x\"\n[quarantine]\nafter_refusals = 0\nwithin = \"1m\"\naction = \"freeze\"\n",
        "3:18",
        "between 1",
    );
    one_error(
        "name = \"x\"\n[quarantine]\nafter_refusals = 3\nwithin = \"1m\"\naction = \"nuke\"\n",
        "5:10",
        "bad action",
    );
    one_error("name = \"x\"\nname = \"y\"\n", "2:1", "invalid TOML");
}

#[test]
fn all_errors_are_reported_in_source_order() {
    let errs = errors("name = \"\"\nmode = \"x\"\ndefault = \"y\"\n[[rule]]\nname = \"a\"\neffect = \"permit\"\nexec = [\"rel\", \"/ok\", \"also-rel\"]\n");
    assert_eq!(errs.len(), 5, "{errs:#?}");
    assert!(errs[0].starts_with("p.toml:1:"));
    assert!(errs[4].starts_with("p.toml:7:"));
}

#[test]
fn invariants_refuse_only() {
    let inv = Invariants::parse(
        "[[rule]]\nname = \"no-ssh\"\nexec = [\"/usr/bin/ssh\"]\n",
        "i.toml",
    )
    .unwrap();
    assert_eq!(inv.rules[0].effect, Effect::Refuse);
    let err = Invariants::parse(
        "[[rule]]\nname = \"a\"\neffect = \"permit\"\nexec = [\"/a\"]\n",
        "i.toml",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("invariants can only refuse"),
        "{err}"
    );
}

#[test]
fn load_names_the_file_on_io_error() {
    let err = Policy::load(std::path::Path::new("/nonexistent/p.toml")).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("/nonexistent/p.toml:1:1: error: cannot read policy"));
}

/// A policy of `n` connect rules named `rule-0`…, one address each.
fn many_rules(n: usize) -> String {
    let mut text = String::from("name = \"large\"\n");
    for i in 0..n {
        text.push_str(&format!(
            "\n[[rule]]\nname = \"rule-{i}\"\neffect = \"permit\"\nconnect = [\"10.0.{}.{}:443\"]\n",
            i / 256,
            i % 256
        ));
    }
    text
}

#[test]
fn a_large_policy_reports_every_error_in_file_order() {
    // Large policies are read in two halves: errors from both, and a duplicate name spanning
    // them, still come out once each, in the order of the file.
    let n = 2000;
    let text = many_rules(n)
        .replace("name = \"rule-1999\"", "name = \"rule-3\"")
        .replace("\"10.0.0.7:443\"", "\"10.0.0.7:99999\"")
        .replace(
            "name = \"rule-1500\"\neffect = \"permit\"",
            "name = \"rule-1500\"\neffect = \"maybe\"",
        );
    let errs = errors(&text);
    let lines: Vec<usize> = errs
        .iter()
        .map(|e| {
            e.split(':')
                .nth(1)
                .and_then(|l| l.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(lines.windows(2).all(|w| w[0] < w[1]), "{errs:#?}");
    assert!(errs[0].contains("99999"), "{errs:#?}");
    assert!(errs[1].contains("maybe"), "{errs:#?}");
    assert!(
        errs[2].contains("duplicate rule name \"rule-3\" (first defined on line 19)"),
        "{errs:#?}"
    );
}

#[test]
fn a_large_policy_keeps_its_rules_in_file_order() {
    let policy = Policy::parse(&many_rules(1500), "p.toml").expect("parses");
    let names: Vec<String> = policy.rules.iter().map(|r| r.name.clone()).collect();
    let expected: Vec<String> = (0..1500).map(|i| format!("rule-{i}")).collect();
    assert_eq!(names, expected);
}
