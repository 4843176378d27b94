//! The permit store: one file per signed permit under `STATE/permits`, so that a restarted
//! daemon can re-adopt its kernel entries after verifying every permit it finds.

use crate::fsutil::{self, PUBLIC_MODE};
use crate::keys::KeyRing;
use crate::permit::{PermitError, PolicyRef, SignedPermit};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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
    /// `insert` found a permit with the same id.
    #[error("{}: a permit with id {id:016x} is already stored", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
        /// The permit id.
        id: u64,
    },
    /// A stored file is not a signed permit.
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
    /// The file name does not match the permit id inside (a copied or renamed file).
    Misfiled {
        /// The id the file name says.
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
                    "file name says permit {file_id} but the permit inside has another id"
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

/// One file of the store as [`PermitStore::list`] sees it, unverified.
#[derive(Debug)]
pub struct Listed {
    /// The file.
    pub file: PathBuf,
    /// The permit, or why it could not be parsed.
    pub permit: Result<SignedPermit, StoreError>,
}

/// Signed permits on disk, one `<id as 16 hex digits>.json` file each.
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

    /// The file that holds permit `id`.
    pub fn path_of(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.json"))
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
        fsutil::create_private_dir(&self.dir).map_err(|source| StoreError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let path = self.path_of(permit.permit.id);
        fsutil::write_atomic(&path, &permit.to_json(), PUBLIC_MODE).map_err(|source| {
            StoreError::Io {
                path: path.clone(),
                source,
            }
        })?;
        Ok(path)
    }

    /// Removes permit `id`; returns whether it was stored.
    pub fn remove(&self, id: u64) -> Result<bool, StoreError> {
        let path = self.path_of(id);
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

    /// The permit files (`*.json`), sorted by name; temporary files are skipped.
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
            if name.ends_with(".json") && !name.starts_with('.') {
                files.push(entry.path());
            }
        }
        files.sort();
        Ok(files)
    }

    /// Every stored permit, parsed but not verified.
    pub fn list(&self) -> Result<Vec<Listed>, StoreError> {
        Ok(self
            .files()?
            .into_iter()
            .map(|file| Listed {
                permit: read_permit(&file),
                file,
            })
            .collect())
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
            let permit = match fs::read(&file) {
                Err(e) => {
                    dropped.push(Dropped {
                        file,
                        permit_id: None,
                        permit: None,
                        reason: DropReason::Unreadable(e.to_string()),
                    });
                    continue;
                }
                Ok(bytes) => match SignedPermit::from_json(&bytes) {
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
                },
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

fn check_one(
    file: &Path,
    permit: &SignedPermit,
    ring: &KeyRing,
    now: u64,
    policy_is_current: &impl Fn(&PolicyRef) -> bool,
) -> Option<DropReason> {
    let expected = format!("{:016x}.json", permit.permit.id);
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
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
