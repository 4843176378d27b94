//! `cargo xtask install [--root DIR]`: the binary, the systemd unit, a default configuration
//! and the shipped policies. Existing configuration and policies are never overwritten.

use anyhow::{Context, Result};
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

/// Installs under `root` (`/` for the running system).
pub fn run(bin: &Path, root: &Path) -> Result<()> {
    let src = crate::root();
    let mut policies: Vec<(PathBuf, PathBuf, u32, bool)> = Vec::new();
    for entry in fs::read_dir(src.join("policies")).context("listing policies/")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Some(name) = path.file_name() {
                policies.push((
                    path.clone(),
                    root.join("etc/bridle/policies").join(name),
                    0o644,
                    false,
                ));
            }
        }
    }
    let files = [
        (bin.to_path_buf(), root.join("usr/bin/bridle"), 0o755, true),
        (
            src.join("agent/systemd/bridle.service"),
            root.join("etc/systemd/system/bridle.service"),
            0o644,
            true,
        ),
        (
            src.join("agent/systemd/bridle.toml"),
            root.join("etc/bridle/bridle.toml"),
            0o644,
            false,
        ),
    ];
    for (from, to, mode, replace) in files.into_iter().chain(policies) {
        if to.exists() && !replace {
            println!("xtask install: kept {} (already there)", to.display());
            continue;
        }
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", to.display()))?;
        println!("xtask install: {}", to.display());
    }
    if root == Path::new("/") {
        println!("then: systemctl daemon-reload && systemctl enable --now bridle");
    }
    Ok(())
}
