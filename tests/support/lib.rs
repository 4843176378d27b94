//! Shared helpers for bridle's integration tests.
//!
//! The tests drive the real `bridle` binary. `cargo xtask test` builds it and passes its path in
//! `BRIDLE_BIN`; run by hand, the tests fall back to the workspace's release, then debug build.

use std::path::PathBuf;

/// Path of the `bridle` binary under test.
pub fn bridle_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BRIDLE_BIN") {
        return PathBuf::from(bin);
    }
    let target = workspace_root().join("target");
    for profile in ["release", "debug"] {
        let candidate = target.join(profile).join("bridle");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("no bridle binary: run `cargo xtask test`, or build it and set BRIDLE_BIN");
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of a policy shipped in `policies/`.
pub fn shipped_policy(name: &str) -> PathBuf {
    workspace_root().join("policies").join(name)
}
