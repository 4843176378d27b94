//! Crash-safe file writes: every file bridle persists is either the old or the new version, never
//! a torn mix, and secret files never exist with a mode wider than 0600, not even for an instant.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of files that hold secret key material.
pub(crate) const SECRET_MODE: u32 = 0o600;
/// Mode of files anyone on the host may read (public keys, bundles).
pub(crate) const PUBLIC_MODE: u32 = 0o644;
/// Mode of stored permits: they disclose the policies, and only the daemon and root read them.
pub(crate) const PERMIT_MODE: u32 = 0o600;

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one: a temporary
/// file in the same directory is created with `mode` (so it is never wider, even briefly), synced,
/// renamed over `path`, and the directory is synced so the rename itself is durable.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_of(path);
    let tmp = temp_sibling(path)?;
    let result = (|| {
        let mut file = create_new_with_mode(&tmp, mode)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        // Best effort: a stray temporary file is harmless but untidy.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates a new file that must not exist yet, with `mode` applied at creation time.
pub(crate) fn create_new_with_mode(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
}

/// Creates `dir` (and its parents) with mode 0700 when missing.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Fsyncs a directory so renames and creations inside it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The permission bits of `path` (the low 12 bits of its mode).
pub(crate) fn mode_of(path: &Path) -> io::Result<u32> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o7777)
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temp_sibling(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
    let tmp = format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        hex::encode(nonce)
    );
    Ok(parent_of(path).join(tmp))
}
