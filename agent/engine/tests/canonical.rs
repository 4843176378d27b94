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

/// The encoding is `bridle-policy/1`, byte for byte: digests already stored in permits and
/// audit records must stay reproducible.
#[test]
fn the_canonical_text_is_bridle_policy_1_byte_for_byte() {
    let p = Policy::parse(A, "c.toml").expect("parse");
    assert_eq!(
        p.canonical(),
        r##"{"allow_anonymous_exec":false,"default":"refuse","format":"bridle-policy/1","mode":"enforce","name":"p","permit_ttl_ms":600000,"quarantine":{"action":"freeze","after_refusals":3,"within_ms":60000},"rules":[{"action":"connect","effect":"permit","name":"net","objects":["10.0.0.0/8:1-1024","api.example.com:443"],"rate_limit":{"max":5,"per_ms":60000}},{"action":"exec","effect":"permit","name":"tools","objects":["/usr/bin/*","/usr/bin/git"],"rate_limit":null}],"version":1}"##
    );
    let q = Policy::parse(
        "name = \"q\"\n[[rule]]\nname = \"u\"\neffect = \"refuse\"\nconnect = [\"unix:/run/x.sock\", \"[2001:db8::/32]:53\", \"raw\"]\n[[rule]]\nname = \"odd\"\neffect = \"permit\"\nexec = [\"/opt/é \\\"x\\\"\\\\/bin\"]\n",
        "q.toml",
    )
    .expect("parse");
    assert_eq!(
        q.canonical(),
        r##"{"allow_anonymous_exec":false,"default":"refuse","format":"bridle-policy/1","mode":"enforce","name":"q","permit_ttl_ms":600000,"quarantine":null,"rules":[{"action":"exec","effect":"permit","name":"odd","objects":["/opt/é \"x\"\\/bin"],"rate_limit":null},{"action":"connect","effect":"refuse","name":"u","objects":["[2001:db8::/32]:53","raw","unix:/run/x.sock"],"rate_limit":null}],"version":null}"##
    );
    let sha = |text: &str| {
        use sha2::Digest;
        hex_of(sha2::Sha256::digest(text.as_bytes()).as_slice())
    };
    assert_eq!(q.digest_hex(), sha(&q.canonical()));
    let inv = bridle_engine::Invariants::parse(
        "[[rule]]\nname = \"no-sh\"\nexec = [\"/bin/sh\"]\n[[rule]]\nname = \"a.b\"\nconnect = [\"1.2.3.4:22\"]\n",
        "i.toml",
    )
    .expect("invariants");
    assert_eq!(
        inv.canonical(),
        r##"{"format":"bridle-policy/1","invariants":[{"action":"connect","effect":"refuse","name":"a.b","objects":["1.2.3.4:22"],"rate_limit":null},{"action":"exec","effect":"refuse","name":"no-sh","objects":["/bin/sh"],"rate_limit":null}]}"##
    );
    assert_eq!(inv.digest_hex(), sha(&inv.canonical()));
}
