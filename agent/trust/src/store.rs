//! The permit store under `STATE/permits`: one file per signed batch (`batch-<ID>.jsonl`, what
//! the issuer writes) and one per permit signed alone (`<ID>.json`, what earlier versions wrote,
//! still read and verified), so that a restarted daemon can re-adopt its kernel entries after
//! verifying every permit it finds. Files are written atomically with mode 0600.

use crate::batch::{PermitBatch, SignedHeader};
use crate::fsutil::{self, PERMIT_MODE};
use crate::keys::KeyRing;
use crate::permit::{PermitError, PolicyRef, SignedPermit};
use std::fmt;
use std::fs;
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};

const BATCH_PREFIX: &str = "batch-";
const BATCH_SUFFIX: &str = ".jsonl";

/// What went wrong in the permit store, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `insert` or `insert_batch` found a permit or batch with the same id.
    #[error("{}: a permit or batch with id {id:016x} is already stored", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
        /// The permit or batch id.
        id: u64,
    },
    /// A stored file is not a signed permit (or batch of permits).
    #[error("{}: not a signed permit: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
}

/// Why a stored permit was not adopted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// The file could not be read.
    Unreadable(String),
    /// The file is not a signed permit.
    Malformed(String),
    /// The file name does not match the permit (or batch) id inside: a copied or renamed file.
    Misfiled {
        /// What the file name says (`<ID>` or `batch-<ID>`).
        file_id: String,
    },
    /// Verification failed.
    Invalid(PermitError),
    /// The permit is authentic, but the policy it was compiled from is no longer current.
    PolicyChanged(PolicyRef),
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::Unreadable(e) => write!(f, "unreadable: {e}"),
            DropReason::Malformed(e) => write!(f, "not a signed permit: {e}"),
            DropReason::Misfiled { file_id } => {
                write!(
                    f,
                    "file name says {file_id} but what it holds has another id (a copied or renamed file)"
                )
            }
            DropReason::Invalid(e) => write!(f, "{e}"),
            DropReason::PolicyChanged(p) => write!(
                f,
                "policy {} (version {}, digest {}) is no longer current",
                p.name,
                p.version
                    .map_or_else(|| "none".to_string(), |v| v.to_string()),
                p.digest
            ),
        }
    }
}

/// A stored permit that `load_verified` refused: the daemon logs it and re-evaluates its object
/// from the current policy.
#[derive(Debug, Clone)]
pub struct Dropped {
    /// The file.
    pub file: PathBuf,
    /// The permit id, when the file could be parsed.
    pub permit_id: Option<u64>,
    /// The permit itself, when it could be parsed (to re-evaluate its subject and object).
    pub permit: Option<SignedPermit>,
    /// Why it was dropped.
    pub reason: DropReason,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.reason)
    }
}

/// One permit of the store as [`PermitStore::list`] sees it, unverified.
#[derive(Debug)]
pub struct Listed {
    /// The file that holds it.
    pub file: PathBuf,
    /// The permit (for a batch member: with its batch header and inclusion proof), or why the
    /// file could not be parsed.
    pub permit: Result<SignedPermit, StoreError>,
}

/// Signed permits on disk: `batch-<id>.jsonl` per batch, `<id>.json` per permit signed alone
/// (ids as 16 hex digits).
#[derive(Debug, Clone)]
pub struct PermitStore {
    dir: PathBuf,
}

impl PermitStore {
    /// The permit store of a state directory (`STATE/permits`).
    pub fn new(state_dir: &Path) -> PermitStore {
        PermitStore {
            dir: state_dir.join("permits"),
        }
    }

    /// A permit store at exactly `dir`.
    pub fn at(dir: PathBuf) -> PermitStore {
        PermitStore { dir }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds permit `id` when it is signed alone.
    pub fn path_of(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.json"))
    }

    /// The file that holds batch `id`.
    pub fn batch_path(&self, id: u64) -> PathBuf {
        self.dir
            .join(format!("{BATCH_PREFIX}{id:016x}{BATCH_SUFFIX}"))
    }

    /// Stores a new batch in one file, atomically; fails if a batch with the same id exists.
    pub fn insert_batch(&self, batch: &PermitBatch) -> Result<PathBuf, StoreError> {
        let path = self.batch_path(batch.header.id);
        if path.exists() {
            return Err(StoreError::Exists {
                path,
                id: batch.header.id,
            });
        }
        self.create_dir()?;
        fsutil::write_atomic(&path, &batch.to_jsonl(), PERMIT_MODE).map_err(|source| {
            StoreError::Io {
                path: path.clone(),
                source,
            }
        })?;
        Ok(path)
    }

    /// Removes batch `id`; returns whether it was stored.
    pub fn remove_batch(&self, id: u64) -> Result<bool, StoreError> {
        self.remove_file(self.batch_path(id))
    }

    /// Removes every file whose permits have all expired at `now`: a batch by its header's
    /// `expires_at` (read from the first line only), a permit signed alone by its own. Files
    /// that cannot be parsed are left for `verify` to report. Returns how many were removed.
    pub fn prune_expired(&self, now: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for file in self.files()? {
            let expires_at = if is_batch_file(&file) {
                read_batch_header(&file).map(|h| h.batch.expires_at)
            } else {
                read_permit(&file).map(|p| p.permit.expires_at)
            };
            if matches!(expires_at, Ok(t) if t <= now) && self.remove_file(file)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn create_dir(&self) -> Result<(), StoreError> {
        fsutil::create_private_dir(&self.dir).map_err(|source| StoreError::Io {
            path: self.dir.clone(),
            source,
        })
    }

    fn remove_file(&self, path: PathBuf) -> Result<bool, StoreError> {
        match fs::remove_file(&path) {
            Ok(()) => {
                fsutil::sync_dir(&self.dir).map_err(|source| StoreError::Io {
                    path: self.dir.clone(),
                    source,
                })?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Stores a new permit; fails if one with the same id exists.
    pub fn insert(&self, permit: &SignedPermit) -> Result<PathBuf, StoreError> {
        let path = self.path_of(permit.permit.id);
        if path.exists() {
            return Err(StoreError::Exists {
                path,
                id: permit.permit.id,
            });
        }
        self.replace(permit)
    }

    /// Stores a permit, replacing any with the same id (a renewal).
    pub fn replace(&self, permit: &SignedPermit) -> Result<PathBuf, StoreError> {
        self.create_dir()?;
        let path = self.path_of(permit.permit.id);
        fsutil::write_atomic(&path, &permit.to_json(), PERMIT_MODE).map_err(|source| {
            StoreError::Io {
                path: path.clone(),
                source,
            }
        })?;
        Ok(path)
    }

    /// Removes permit `id` signed alone; returns whether it was stored.
    pub fn remove(&self, id: u64) -> Result<bool, StoreError> {
        self.remove_file(self.path_of(id))
    }

    /// The permit files (`*.json` and `batch-*.jsonl`), sorted by name; temporary files are
    /// skipped.
    pub fn files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::Io {
                path: self.dir.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let batch = name.starts_with(BATCH_PREFIX) && name.ends_with(BATCH_SUFFIX);
            if (name.ends_with(".json") || batch) && !name.starts_with('.') {
                files.push(entry.path());
            }
        }
        files.sort();
        Ok(files)
    }

    /// Every stored permit, parsed but not verified; a batch member comes with its batch header
    /// and inclusion proof, as it verifies on its own. A file that cannot be parsed is one
    /// entry with the error.
    pub fn list(&self) -> Result<Vec<Listed>, StoreError> {
        let mut listed = Vec::new();
        for file in self.files()? {
            if !is_batch_file(&file) {
                listed.push(Listed {
                    permit: read_permit(&file),
                    file,
                });
                continue;
            }
            match read_batch(&file) {
                Ok(batch) => listed.extend(batch.signed_permits().into_iter().map(|p| Listed {
                    file: file.clone(),
                    permit: Ok(p),
                })),
                Err(e) => listed.push(Listed {
                    file,
                    permit: Err(e),
                }),
            }
        }
        Ok(listed)
    }

    /// The stored permit with this id and the file that holds it, unverified (for a batch
    /// member: with its batch header and inclusion proof, ready to verify elsewhere).
    pub fn find(&self, id: u64) -> Result<Option<(PathBuf, SignedPermit)>, StoreError> {
        let alone = self.path_of(id);
        if alone.exists() {
            return read_permit(&alone).map(|p| Some((alone, p)));
        }
        for file in self.files()?.into_iter().filter(|f| is_batch_file(f)) {
            if let Ok(batch) = read_batch(&file) {
                if let Some(p) = batch.signed_permit(id) {
                    return Ok(Some((file, p)));
                }
            }
        }
        Ok(None)
    }

    /// Loads the permits a restarted daemon may adopt: each one is verified (both signatures, a
    /// known key, validity at `now`), filed under its own id, and compiled from a policy that
    /// `policy_is_current` still accepts. Everything else is returned as dropped, with the reason
    /// and (when parseable) the permit so that its object can be re-evaluated.
    pub fn load_verified(
        &self,
        ring: &KeyRing,
        now: u64,
        policy_is_current: impl Fn(&PolicyRef) -> bool,
    ) -> Result<(Vec<SignedPermit>, Vec<Dropped>), StoreError> {
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for file in self.files()? {
            let bytes = match fs::read(&file) {
                Err(e) => {
                    dropped.push(Dropped {
                        file,
                        permit_id: None,
                        permit: None,
                        reason: DropReason::Unreadable(e.to_string()),
                    });
                    continue;
                }
                Ok(bytes) => bytes,
            };
            if is_batch_file(&file) {
                let batch = match PermitBatch::from_jsonl(&bytes) {
                    Err(e) => {
                        dropped.push(Dropped {
                            file,
                            permit_id: None,
                            permit: None,
                            reason: DropReason::Malformed(e),
                        });
                        continue;
                    }
                    Ok(b) => b,
                };
                let misfiled = file_name(&file) != file_name(&self.batch_path(batch.header.id));
                let results = batch.verify(ring, now);
                for (permit, result) in batch.signed_permits().into_iter().zip(results) {
                    let reason = match result {
                        Err(e) => Some(DropReason::Invalid(e)),
                        Ok(()) if misfiled => Some(DropReason::Misfiled {
                            file_id: file_name(&file).trim_end_matches(BATCH_SUFFIX).to_string(),
                        }),
                        Ok(()) if !policy_is_current(&permit.permit.policy) => {
                            Some(DropReason::PolicyChanged(permit.permit.policy.clone()))
                        }
                        Ok(()) => None,
                    };
                    match reason {
                        None => kept.push(permit),
                        Some(reason) => dropped.push(Dropped {
                            file: file.clone(),
                            permit_id: Some(permit.permit.id),
                            permit: Some(permit),
                            reason,
                        }),
                    }
                }
                continue;
            }
            let permit = match SignedPermit::from_json(&bytes) {
                Err(e) => {
                    dropped.push(Dropped {
                        file,
                        permit_id: None,
                        permit: None,
                        reason: DropReason::Malformed(e.to_string()),
                    });
                    continue;
                }
                Ok(p) => p,
            };
            let reason = check_one(&file, &permit, ring, now, &policy_is_current);
            match reason {
                None => kept.push(permit),
                Some(reason) => dropped.push(Dropped {
                    file,
                    permit_id: Some(permit.permit.id),
                    permit: Some(permit),
                    reason,
                }),
            }
        }
        Ok((kept, dropped))
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether `path` is named as a batch file (`batch-*.jsonl`).
pub fn is_batch_file(path: &Path) -> bool {
    let name = file_name(path);
    name.starts_with(BATCH_PREFIX) && name.ends_with(BATCH_SUFFIX)
}

fn check_one(
    file: &Path,
    permit: &SignedPermit,
    ring: &KeyRing,
    now: u64,
    policy_is_current: &impl Fn(&PolicyRef) -> bool,
) -> Option<DropReason> {
    let expected = format!("{:016x}.json", permit.permit.id);
    let name = file_name(file);
    if let Err(e) = permit.verify(ring, now) {
        return Some(DropReason::Invalid(e));
    }
    if name != expected {
        return Some(DropReason::Misfiled {
            file_id: name.trim_end_matches(".json").to_string(),
        });
    }
    if !policy_is_current(&permit.permit.policy) {
        return Some(DropReason::PolicyChanged(permit.permit.policy.clone()));
    }
    None
}

/// Reads one permit file (no verification).
pub fn read_permit(path: &Path) -> Result<SignedPermit, StoreError> {
    let bytes = fs::read(path).map_err(|source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    SignedPermit::from_json(&bytes).map_err(|e| StoreError::Malformed {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads one batch file (no verification).
pub fn read_batch(path: &Path) -> Result<PermitBatch, StoreError> {
    let bytes = fs::read(path).map_err(|source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    PermitBatch::from_jsonl(&bytes).map_err(|reason| StoreError::Malformed {
        path: path.to_path_buf(),
        reason,
    })
}

/// Reads only the first line of a batch file: its signed header (no verification).
pub fn read_batch_header(path: &Path) -> Result<SignedHeader, StoreError> {
    let io_err = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut line = Vec::new();
    io::BufReader::new(fs::File::open(path).map_err(io_err)?)
        .read_until(b'\n', &mut line)
        .map_err(io_err)?;
    serde_json::from_slice(&line).map_err(|e| StoreError::Malformed {
        path: path.to_path_buf(),
        reason: format!("line 1: not a batch header: {e}"),
    })
}
