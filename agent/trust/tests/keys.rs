//! Key store: permissions, rotation, export.

mod common;
use bridle_trust::{KeyError, KeyRing, KeyStore, PermitError};
use common::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn secret_files_are_created_0600_and_a_readable_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::new(dir.path());
    let k = store.generate(T0, None).unwrap();
    let key_dir = dir.path().join("keys").join(k.key_id());
    for name in ["secret.ed25519", "secret.mldsa65"] {
        let mode = std::fs::metadata(key_dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    assert_eq!(store.load_current().unwrap().key_id(), k.key_id());

    let secret = key_dir.join("secret.mldsa65");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = store.load_current().unwrap_err();
    assert!(matches!(err, KeyError::InsecurePermissions { .. }));
    let msg = err.to_string();
    assert!(msg.contains(&secret.display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("chmod 600 {}", secret.display())),
        "{msg}"
    );
}

#[test]
fn a_secret_that_does_not_match_its_public_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::new(dir.path());
    let k = store.generate(T0, None).unwrap();
    let secret = dir
        .path()
        .join("keys")
        .join(k.key_id())
        .join("secret.ed25519");
    std::fs::write(&secret, [3u8; 32]).unwrap();
    assert!(matches!(
        store.load_current(),
        Err(KeyError::Malformed { .. })
    ));
}

#[test]
fn rotation_keeps_old_permits_verifiable_and_signs_new_ones_with_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::new(dir.path());
    let old = store.generate(T0 - 10 * SEC, None).unwrap();
    let old_permit = permit(1, "/usr/bin/git").sign(&old);
    let new = store.generate(T0, None).unwrap();
    assert_ne!(old.key_id(), new.key_id());
    assert_eq!(store.current_id().unwrap().as_deref(), Some(new.key_id()));
    // The retired key can no longer sign: its secrets are gone, its public key stays.
    let old_dir = dir.path().join("keys").join(old.key_id());
    assert!(!old_dir.join("secret.ed25519").exists());
    assert!(old_dir.join("public.json").exists());

    let current = store.load_current().unwrap();
    let new_permit = permit(2, "/usr/bin/curl").sign(&current);
    assert_eq!(new_permit.permit.key_id, new.key_id());

    let ring = store.keyring().unwrap();
    assert_eq!(ring.len(), 2);
    assert_eq!(old_permit.verify(&ring, T0 + SEC), Ok(()));
    assert_eq!(new_permit.verify(&ring, T0 + SEC), Ok(()));
    // ...and they still expire.
    assert!(matches!(
        old_permit.verify(&ring, T0 + 601 * SEC),
        Err(PermitError::Expired { .. })
    ));
}

#[test]
fn the_exported_bundle_verifies_offline_and_rejects_a_tampered_key_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::new(dir.path());
    let k1 = store.generate(T0, Some(T0 + 3600 * SEC)).unwrap();
    let k2 = store.generate(T0 + SEC, None).unwrap();
    let out = dir.path().join("bundle.json");
    let bundle = store.export(&out).unwrap();
    assert_eq!(bundle.current.as_deref(), Some(k2.key_id()));
    assert_eq!(bundle.keys.len(), 2);
    assert_eq!(bundle.keys[0].expires_at, Some(T0 + 3600 * SEC));
    let ring = KeyRing::load_bundle(&out).unwrap();
    let p = permit(3, "/bin/sh").sign(&k1);
    assert_eq!(p.verify(&ring, T0 + SEC), Ok(()));

    let mut tampered = bundle.clone();
    tampered.keys[0].key_id = k2.key_id().to_string();
    std::fs::write(&out, serde_json::to_vec(&tampered).unwrap()).unwrap();
    assert!(KeyRing::load_bundle(&out).is_err());
}

#[test]
fn load_or_generate_creates_a_key_on_first_start_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::new(dir.path());
    let a = store.load_or_generate(T0).unwrap();
    let b = store.load_or_generate(T0 + SEC).unwrap();
    assert_eq!(a.key_id(), b.key_id());
}
