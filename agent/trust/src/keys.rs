//! Hybrid signing keys: one Ed25519 key and one ML-DSA-65 key under a single key id, their
//! on-disk store with rotation, and the public bundle that offline verifiers use.
//!
//! Both halves sign the same bytes and a verifier requires both, so an attacker has to break the
//! classical and the post-quantum scheme at once.

use crate::clock::format_ns;
use crate::fsutil::{self, PUBLIC_MODE, SECRET_MODE};
use ed25519_dalek::Signer as _;
use ml_dsa::MlDsa65;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The ML-DSA context string: binds every ML-DSA signature to bridle, on top of the per-object
/// domain prefixes in the signed bytes.
const MLDSA_CONTEXT: &[u8] = b"bridle";
/// Length of an Ed25519 signature.
pub const ED25519_SIG_LEN: usize = 64;
/// Length of an ML-DSA-65 signature.
pub const MLDSA65_SIG_LEN: usize = 3309;
/// Format tag of a public key bundle.
pub const BUNDLE_FORMAT: &str = "bridle-public-keys/1";

const SECRET_ED25519: &str = "secret.ed25519";
const SECRET_MLDSA65: &str = "secret.mldsa65";
const PUBLIC_JSON: &str = "public.json";
const CURRENT: &str = "current";

/// One of the two signature algorithms of a hybrid signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Ed25519 (RFC 8032), the classical half.
    Ed25519,
    /// ML-DSA-65 (FIPS 204), the post-quantum half.
    MlDsa65,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Ed25519 => "Ed25519",
            Algorithm::MlDsa65 => "ML-DSA-65",
        })
    }
}

/// What went wrong with keys, naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a key file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A secret key file is readable by group or others.
    #[error(
        "{}: secret key file is accessible by group or others (mode {mode:04o}); refusing to use it: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    InsecurePermissions {
        /// The secret key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file does not have the expected content.
    #[error("{}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// There is no current key in the key directory.
    #[error("{}: no current key (run `bridle keys generate`)", dir.display())]
    NoCurrentKey {
        /// The key directory.
        dir: PathBuf,
    },
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Fills a buffer from the operating system's random source.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(buf)
}

/// The public half of a key pair as stored and exported: id, validity and both public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyInfo {
    /// First 16 hex digits of sha256 over both public keys.
    pub key_id: String,
    /// When the key was generated (Unix ns).
    pub created_at: u64,
    /// After this time (Unix ns) nothing signed with the key verifies.
    pub expires_at: Option<u64>,
    /// The Ed25519 public key (32 bytes).
    #[serde(with = "crate::b64")]
    pub ed25519: Vec<u8>,
    /// The ML-DSA-65 public key (1952 bytes).
    #[serde(with = "crate::b64")]
    pub mldsa65: Vec<u8>,
}

/// The key id of a pair of public keys: a short, stable name that commits to both halves.
pub fn key_id_of(ed25519: &[u8], mldsa65: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"bridle-key-v1\0");
    h.update(ed25519);
    h.update(mldsa65);
    hex::encode(&h.finalize()[..8])
}

/// A decoded public key, ready to verify hybrid signatures.
#[derive(Clone)]
pub struct PublicKey {
    info: PublicKeyInfo,
    ed25519: ed25519_dalek::VerifyingKey,
    mldsa65: ml_dsa::VerifyingKey<MlDsa65>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("key_id", &self.info.key_id)
            .finish_non_exhaustive()
    }
}

/// Which halves of a hybrid signature verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureCheck {
    /// The Ed25519 signature verified.
    pub ed25519: bool,
    /// The ML-DSA-65 signature verified.
    pub mldsa65: bool,
}

impl SignatureCheck {
    /// Both halves verified: the only acceptable outcome.
    pub fn both(self) -> bool {
        self.ed25519 && self.mldsa65
    }
}

impl PublicKey {
    /// Decodes and checks a public key: both keys must parse and the id must match them.
    pub fn from_info(info: PublicKeyInfo) -> Result<PublicKey, String> {
        let ed_bytes: [u8; 32] = info.ed25519.as_slice().try_into().map_err(|_| {
            format!(
                "Ed25519 public key has {} bytes, not 32",
                info.ed25519.len()
            )
        })?;
        let ed25519 = ed25519_dalek::VerifyingKey::from_bytes(&ed_bytes)
            .map_err(|e| format!("invalid Ed25519 public key: {e}"))?;
        let ml_enc = ml_dsa::EncodedVerifyingKey::<MlDsa65>::try_from(info.mldsa65.as_slice())
            .map_err(|_| {
                format!(
                    "ML-DSA-65 public key has {} bytes, not 1952",
                    info.mldsa65.len()
                )
            })?;
        let mldsa65 = ml_dsa::VerifyingKey::<MlDsa65>::decode(&ml_enc);
        let expected = key_id_of(&info.ed25519, &info.mldsa65);
        if info.key_id != expected {
            return Err(format!(
                "key id {} does not match its public keys (expected {expected})",
                info.key_id
            ));
        }
        Ok(PublicKey {
            info,
            ed25519,
            mldsa65,
        })
    }

    /// The stored form: id, validity, public keys.
    pub fn info(&self) -> &PublicKeyInfo {
        &self.info
    }

    /// The key id.
    pub fn key_id(&self) -> &str {
        &self.info.key_id
    }

    /// Checks each half of a hybrid signature over `message`; the caller decides what a partial
    /// result means (see [`SignatureCheck::both`]).
    pub fn check(&self, message: &[u8], ed25519: &[u8], mldsa65: &[u8]) -> SignatureCheck {
        let ed_ok = ed25519_dalek::Signature::from_slice(ed25519)
            .map(|sig| self.ed25519.verify_strict(message, &sig).is_ok())
            .unwrap_or(false);
        let ml_ok = ml_dsa::Signature::<MlDsa65>::try_from(mldsa65)
            .map(|sig| {
                self.mldsa65
                    .verify_with_context(message, MLDSA_CONTEXT, &sig)
            })
            .unwrap_or(false);
        SignatureCheck {
            ed25519: ed_ok,
            mldsa65: ml_ok,
        }
    }

    /// Whether the key has expired at `now` (Unix ns).
    pub fn expired_at(&self, now: u64) -> bool {
        self.info.expires_at.is_some_and(|exp| now >= exp)
    }
}

/// A hybrid signature: both halves over the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HybridSignature {
    /// The Ed25519 signature (64 bytes).
    pub ed25519: Vec<u8>,
    /// The ML-DSA-65 signature (3309 bytes).
    pub mldsa65: Vec<u8>,
}

/// A secret key pair: Ed25519 + ML-DSA-65 under one key id.
pub struct KeyPair {
    public: PublicKey,
    ed25519: ed25519_dalek::SigningKey,
    mldsa65: ml_dsa::SigningKey<MlDsa65>,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("key_id", &self.public.info.key_id)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// Generates a fresh key pair from the operating system's random source.
    pub fn generate(created_at: u64, expires_at: Option<u64>) -> Result<KeyPair, KeyError> {
        let ed_seed = random_bytes::<32>()?;
        let ml_seed = random_bytes::<32>()?;
        Ok(KeyPair::from_seeds(
            &ed_seed, &ml_seed, created_at, expires_at,
        ))
    }

    /// Rebuilds a key pair from its two 32-byte seeds (the form stored on disk: FIPS 204 allows
    /// an ML-DSA key to be kept as its seed, and it is 32 bytes instead of 4032).
    pub fn from_seeds(
        ed25519_seed: &[u8; 32],
        mldsa65_seed: &[u8; 32],
        created_at: u64,
        expires_at: Option<u64>,
    ) -> KeyPair {
        let ed25519 = ed25519_dalek::SigningKey::from_bytes(ed25519_seed);
        let mldsa65 = ml_dsa::SigningKey::<MlDsa65>::from_seed(&ml_dsa::B32::from(*mldsa65_seed));
        let ed_pub = ed25519.verifying_key();
        let ml_pub = mldsa65.expanded_key().verifying_key();
        let ed_bytes = ed_pub.to_bytes().to_vec();
        let ml_bytes = ml_pub.encode().to_vec();
        let info = PublicKeyInfo {
            key_id: key_id_of(&ed_bytes, &ml_bytes),
            created_at,
            expires_at,
            ed25519: ed_bytes,
            mldsa65: ml_bytes,
        };
        KeyPair {
            public: PublicKey {
                info,
                ed25519: ed_pub,
                mldsa65: ml_pub,
            },
            ed25519,
            mldsa65,
        }
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The key id.
    pub fn key_id(&self) -> &str {
        &self.public.info.key_id
    }

    /// Signs `message` with both keys. ML-DSA signing uses the deterministic variant, so a
    /// signature never depends on the quality of the random source at signing time.
    pub fn sign(&self, message: &[u8]) -> HybridSignature {
        let ed = self.ed25519.sign(message).to_bytes().to_vec();
        let ml = self
            .mldsa65
            .expanded_key()
            .sign_deterministic(message, MLDSA_CONTEXT)
            .map(|s| s.encode().to_vec())
            // The context is a short constant, so this cannot fail; an empty signature would be
            // reported as missing by every verifier rather than silently accepted.
            .unwrap_or_default();
        HybridSignature {
            ed25519: ed,
            mldsa65: ml,
        }
    }

    fn seeds(&self) -> ([u8; 32], [u8; 32]) {
        let ml: [u8; 32] = self.mldsa65.to_seed().into();
        (self.ed25519.to_bytes(), ml)
    }
}

/// Public keys by key id: everything a verifier needs.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: BTreeMap<String, PublicKey>,
}

impl KeyRing {
    /// An empty key ring.
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    /// Adds (or replaces) a key.
    pub fn insert(&mut self, key: PublicKey) {
        self.keys.insert(key.info.key_id.clone(), key);
    }

    /// The key with this id.
    pub fn get(&self, key_id: &str) -> Option<&PublicKey> {
        self.keys.get(key_id)
    }

    /// All keys, by id.
    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.values()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the ring has no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// A ring with every key of a public bundle, each checked against its id.
    pub fn from_bundle(bundle: &PublicBundle) -> Result<KeyRing, String> {
        let mut ring = KeyRing::new();
        for info in &bundle.keys {
            let id = info.key_id.clone();
            ring.insert(PublicKey::from_info(info.clone()).map_err(|e| format!("key {id}: {e}"))?);
        }
        Ok(ring)
    }

    /// Loads a public bundle file (as written by `bridle keys export`).
    pub fn load_bundle(path: &Path) -> Result<KeyRing, KeyError> {
        let bytes = fs::read(path).map_err(io_err(path))?;
        let bundle: PublicBundle =
            serde_json::from_slice(&bytes).map_err(|e| KeyError::Malformed {
                path: path.to_path_buf(),
                reason: format!("not a public key bundle: {e}"),
            })?;
        if bundle.format != BUNDLE_FORMAT {
            return Err(KeyError::Malformed {
                path: path.to_path_buf(),
                reason: format!("bundle format `{}` is not `{BUNDLE_FORMAT}`", bundle.format),
            });
        }
        KeyRing::from_bundle(&bundle).map_err(|reason| KeyError::Malformed {
            path: path.to_path_buf(),
            reason,
        })
    }
}

/// The public keys for offline verifiers: every key the host has used, current and previous.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicBundle {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// The id of the key that signs now.
    pub current: Option<String>,
    /// Every public key, oldest first.
    pub keys: Vec<PublicKeyInfo>,
}

/// The key directory `STATE/keys` (layout in the crate documentation).
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    /// The key store of a state directory (`STATE/keys`).
    pub fn new(state_dir: &Path) -> KeyStore {
        KeyStore {
            dir: state_dir.join("keys"),
        }
    }

    /// A key store at exactly `dir`.
    pub fn at(dir: PathBuf) -> KeyStore {
        KeyStore { dir }
    }

    /// The key directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The id of the current key, if any.
    pub fn current_id(&self) -> Result<Option<String>, KeyError> {
        let path = self.dir.join(CURRENT);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let id = text.trim().to_string();
                check_key_id(&id).map_err(|reason| KeyError::Malformed {
                    path: path.clone(),
                    reason,
                })?;
                Ok(Some(id))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(KeyError::Io { path, source: e }),
        }
    }

    /// Generates a new key pair and makes it current. An existing current key is rotated: its
    /// public key stays in the store so that what it signed still verifies, and its secret files
    /// are deleted because nothing may sign with a retired key.
    pub fn generate(&self, now: u64, expires_at: Option<u64>) -> Result<KeyPair, KeyError> {
        fsutil::create_private_dir(&self.dir).map_err(io_err(&self.dir))?;
        let previous = self.current_id()?;
        let pair = KeyPair::generate(now, expires_at)?;
        let id = pair.key_id().to_string();
        let final_dir = self.dir.join(&id);
        // The key directory is assembled under a temporary name and renamed into place, so a
        // crash never leaves a half-written key that looks usable.
        let tmp_dir = self.dir.join(format!(".new-{id}"));
        fsutil::create_private_dir(&tmp_dir).map_err(io_err(&tmp_dir))?;
        let (ed_seed, ml_seed) = pair.seeds();
        write_new(&tmp_dir.join(SECRET_ED25519), &ed_seed, SECRET_MODE)?;
        write_new(&tmp_dir.join(SECRET_MLDSA65), &ml_seed, SECRET_MODE)?;
        let public =
            serde_json::to_vec_pretty(pair.public().info()).map_err(|e| KeyError::Malformed {
                path: tmp_dir.join(PUBLIC_JSON),
                reason: e.to_string(),
            })?;
        write_new(&tmp_dir.join(PUBLIC_JSON), &public, PUBLIC_MODE)?;
        fsutil::sync_dir(&tmp_dir).map_err(io_err(&tmp_dir))?;
        fs::rename(&tmp_dir, &final_dir).map_err(io_err(&final_dir))?;
        let current = self.dir.join(CURRENT);
        fsutil::write_atomic(&current, format!("{id}\n").as_bytes(), PUBLIC_MODE)
            .map_err(io_err(&current))?;
        if let Some(old) = previous.filter(|old| *old != id) {
            for name in [SECRET_ED25519, SECRET_MLDSA65] {
                let path = self.dir.join(&old).join(name);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(KeyError::Io { path, source: e }),
                }
            }
        }
        Ok(pair)
    }

    /// Loads the current key pair, refusing secret files that group or others can access.
    pub fn load_current(&self) -> Result<KeyPair, KeyError> {
        let id = self.current_id()?.ok_or_else(|| KeyError::NoCurrentKey {
            dir: self.dir.clone(),
        })?;
        let key_dir = self.dir.join(&id);
        let info = read_public(&key_dir.join(PUBLIC_JSON))?;
        let ed_seed = read_secret(&key_dir.join(SECRET_ED25519))?;
        let ml_seed = read_secret(&key_dir.join(SECRET_MLDSA65))?;
        let pair = KeyPair::from_seeds(&ed_seed, &ml_seed, info.created_at, info.expires_at);
        if pair.public().info() != &info {
            return Err(KeyError::Malformed {
                path: key_dir,
                reason: "the secret keys do not belong to public.json".to_string(),
            });
        }
        Ok(pair)
    }

    /// The current key pair, generated first if the store has none (the daemon's first start).
    pub fn load_or_generate(&self, now: u64) -> Result<KeyPair, KeyError> {
        if self.current_id()?.is_some() {
            self.load_current()
        } else {
            self.generate(now, None)
        }
    }

    /// Every public key in the store (current and previous), checked against its id.
    pub fn public_keys(&self) -> Result<Vec<PublicKeyInfo>, KeyError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(KeyError::Io {
                    path: self.dir.clone(),
                    source: e,
                })
            }
        };
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if check_key_id(&name).is_err() || !entry.path().is_dir() {
                continue;
            }
            let path = entry.path().join(PUBLIC_JSON);
            let info = read_public(&path)?;
            if info.key_id != name {
                return Err(KeyError::Malformed {
                    path,
                    reason: format!("holds key {} but lives in directory {name}", info.key_id),
                });
            }
            keys.push(info);
        }
        keys.sort_by(|a, b| (a.created_at, &a.key_id).cmp(&(b.created_at, &b.key_id)));
        Ok(keys)
    }

    /// A key ring with every public key in the store.
    pub fn keyring(&self) -> Result<KeyRing, KeyError> {
        let bundle = self.bundle()?;
        KeyRing::from_bundle(&bundle).map_err(|reason| KeyError::Malformed {
            path: self.dir.clone(),
            reason,
        })
    }

    /// The public bundle for offline verifiers.
    pub fn bundle(&self) -> Result<PublicBundle, KeyError> {
        Ok(PublicBundle {
            format: BUNDLE_FORMAT.to_string(),
            current: self.current_id()?,
            keys: self.public_keys()?,
        })
    }

    /// Writes the public bundle to `out` (atomically, mode 0644).
    pub fn export(&self, out: &Path) -> Result<PublicBundle, KeyError> {
        let bundle = self.bundle()?;
        let mut json = serde_json::to_vec_pretty(&bundle).map_err(|e| KeyError::Malformed {
            path: out.to_path_buf(),
            reason: e.to_string(),
        })?;
        json.push(b'\n');
        fsutil::write_atomic(out, &json, PUBLIC_MODE).map_err(io_err(out))?;
        Ok(bundle)
    }
}

/// A human summary of a key for `bridle keys show`.
pub fn describe(info: &PublicKeyInfo, current: bool) -> String {
    format!(
        "{}{}  created {}  expires {}",
        info.key_id,
        if current { " (current)" } else { "" },
        format_ns(info.created_at),
        info.expires_at
            .map_or_else(|| "never".to_string(), format_ns)
    )
}

fn check_key_id(id: &str) -> Result<(), String> {
    if id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!("`{id}` is not a key id (16 lower-case hex digits)"))
    }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let mut file = fsutil::create_new_with_mode(path, mode).map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

fn read_public(path: &Path) -> Result<PublicKeyInfo, KeyError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let info: PublicKeyInfo = serde_json::from_slice(&bytes).map_err(|e| KeyError::Malformed {
        path: path.to_path_buf(),
        reason: format!("not a public key: {e}"),
    })?;
    PublicKey::from_info(info.clone()).map_err(|reason| KeyError::Malformed {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(info)
}

fn read_secret(path: &Path) -> Result<[u8; 32], KeyError> {
    let mode = fsutil::mode_of(path).map_err(io_err(path))?;
    if mode & 0o077 != 0 {
        return Err(KeyError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let bytes = fs::read(path).map_err(io_err(path))?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Malformed {
            path: path.to_path_buf(),
            reason: format!("a secret seed is 32 bytes, this file has {}", bytes.len()),
        })
}
