//! Feeds arbitrary text to the policy and invariants parsers: they must reject or accept, never
//! panic; and an accepted policy must canonicalise, digest and re-parse its patterns.
#![no_main]

use bridle_engine::{Invariants, Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = Policy::parse(text, "fuzz.toml") {
        let _ = policy.digest_hex();
        let mut engine = bridle_engine::Engine::new(policy);
        for object in [
            bridle_engine::Object::Exec("/usr/bin/git".into()),
            bridle_engine::Object::Connect(bridle_engine::Target::Raw),
        ] {
            let _ = engine.evaluate(&object);
        }
        let _ = bridle_engine::compile(engine.policy());
    }
    if let Err(e) = Invariants::parse(text, "fuzz.toml") {
        assert!(!e.diagnostics.is_empty());
    }
});
