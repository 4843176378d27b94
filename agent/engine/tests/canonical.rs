//! Canonical form: same meaning, same digest; any change of meaning, another digest.

use bridle_engine::Policy;

const A: &str = r#"
# a comment
name = "p"
version = 1
mode = "enforce"
default = "refuse"
permit_ttl = "10m"

[[rule]]
name = "tools"
effect = "permit"
exec = ["/usr/bin/git", "/usr/bin/*"]

[[rule]]
name = "net"
effect = "permit"
connect = ["api.example.com:443", "10.0.0.0/8:1-1024"]
rate_limit = { max = 5, per = "1m" }

[quarantine]
after_refusals = 3
within = "1m"
action = "freeze"
"#;

/// The same policy: other key order, no comments, other layout, rules and patterns reordered,
/// a duplicate pattern, defaults spelt out differently, equal durations written otherwise.
const A_AGAIN: &str = r#"
version=1
name="p"
permit_ttl="600s"
[quarantine]
action="freeze"
within="60s"
after_refusals=3
[[rule]]
connect=["10.0.0.0/8:1-1024","API.example.com.:443","api.example.com:443"]
effect="permit"
rate_limit={per="60000ms",max=5}
name="net"
[[rule]]
exec=["/usr/bin/*","/usr/bin/git"]
name="tools"
effect="permit"
"#;

fn digest(src: &str) -> String {
    Policy::parse(src, "c.toml")
        .unwrap_or_else(|e| panic!("{e}\n{src}"))
        .digest_hex()
}

#[test]
fn same_meaning_same_digest() {
    assert_eq!(digest(A), digest(A_AGAIN));
    let p = Policy::parse(A, "c.toml").unwrap();
    assert_eq!(p.digest_hex(), hex_of(&p.digest()));
    assert!(p.canonical().contains("\"format\":\"bridle-policy/1\""));
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_change_of_meaning_changes_the_digest() {
    let base = digest(A);
    let changes = [
        ("name = \"p\"", "name = \"q\""),
        ("version = 1", "version = 2"),
        ("version = 1", ""),
        ("mode = \"enforce\"", "mode = \"observe\""),
        ("default = \"refuse\"", "default = \"permit\""),
        ("permit_ttl = \"10m\"", "permit_ttl = \"11m\""),
        (
            "permit_ttl = \"10m\"",
            "allow_anonymous_exec = true\npermit_ttl = \"10m\"",
        ),
        ("name = \"tools\"", "name = \"tools2\""),
        ("effect = \"permit\"\nexec", "effect = \"refuse\"\nexec"),
        ("\"/usr/bin/git\", ", ""),
        ("\"/usr/bin/*\"", "\"/usr/bin/**\""),
        ("10.0.0.0/8:1-1024", "10.0.0.0/8:1-1025"),
        ("10.0.0.0/8:1-1024", "10.0.0.0/9:1-1024"),
        ("api.example.com:443", "*.example.com:443"),
        ("max = 5", "max = 6"),
        ("per = \"1m\"", "per = \"2m\""),
        ("rate_limit = { max = 5, per = \"1m\" }", ""),
        ("after_refusals = 3", "after_refusals = 4"),
        ("within = \"1m\"", "within = \"2m\""),
        ("action = \"freeze\"", "action = \"kill\""),
        (
            "[quarantine]\nafter_refusals = 3\nwithin = \"1m\"\naction = \"freeze\"\n",
            "",
        ),
    ];
    let mut seen = std::collections::HashSet::new();
    seen.insert(base.clone());
    for (from, to) in changes {
        assert!(A.contains(from), "{from}");
        let changed = digest(&A.replacen(from, to, 1));
        assert!(
            seen.insert(changed),
            "change {from:?} -> {to:?} kept a digest"
        );
    }
}

#[test]
fn port_star_differs_from_a_full_range() {
    // `*` includes port 0; 1-65535 does not.
    let star = digest(
        "name = \"p\"\n[[rule]]\nname = \"a\"\neffect = \"permit\"\nconnect = [\"1.2.3.4:*\"]\n",
    );
    let full = digest("name = \"p\"\n[[rule]]\nname = \"a\"\neffect = \"permit\"\nconnect = [\"1.2.3.4:1-65535\"]\n");
    assert_ne!(star, full);
}
