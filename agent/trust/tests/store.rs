//! Permit store: a restart adopts only what verifies.

mod common;
use bridle_trust::{DropReason, PermitError, PermitStore};
use common::*;

#[test]
fn a_restart_with_a_tampered_store_drops_the_bad_permits_and_keeps_the_good() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(1);
    let foreign = key(2);
    let store = PermitStore::new(dir.path());
    let good1 = permit(1, "/usr/bin/git").sign(&k);
    let good2 = permit(2, "/usr/bin/make").sign(&k);
    store.insert(&good1).unwrap();
    store.insert(&good2).unwrap();
    assert!(
        store.insert(&good1).is_err(),
        "insert refuses a duplicate id"
    );

    // Edited after signing.
    let mut edited = permit(3, "/usr/bin/curl").sign(&k);
    store.insert(&edited).unwrap();
    edited.permit.object = "/usr/bin/nc".into();
    store.replace(&edited).unwrap();
    // Signed by a foreign key.
    store.insert(&permit(4, "/bin/sh").sign(&foreign)).unwrap();
    // One signature missing.
    let mut half = permit(5, "/bin/ls").sign(&k);
    half.mldsa65.clear();
    store.insert(&half).unwrap();
    // Compiled from a policy that changed since.
    let mut old_policy = permit(6, "/bin/cat");
    old_policy.policy.digest = "ee".repeat(32);
    store.insert(&old_policy.sign(&k)).unwrap();
    // Garbage.
    std::fs::write(store.dir().join("0000000000000007.json"), b"{not json").unwrap();
    // A valid permit copied under another id's name.
    std::fs::copy(store.path_of(1), store.dir().join("0000000000000008.json")).unwrap();

    let current = "ab".repeat(32);
    let (kept, dropped) = store
        .load_verified(&ring(&[&k]), T0 + SEC, |p| p.digest == current)
        .unwrap();
    let kept_ids: Vec<u64> = kept.iter().map(|p| p.permit.id).collect();
    assert_eq!(kept_ids, vec![1, 2]);
    let reasons: Vec<(Option<u64>, String)> = dropped
        .iter()
        .map(|d| (d.permit_id, d.reason.to_string()))
        .collect();
    assert_eq!(dropped.len(), 6, "{reasons:?}");
    let by_id = |id: u64| {
        dropped
            .iter()
            .find(|d| d.permit_id == Some(id) && d.file == store.path_of(id))
            .unwrap()
    };
    assert_eq!(
        by_id(3).reason,
        DropReason::Invalid(PermitError::ContentChanged { id: 3 })
    );
    assert!(matches!(
        by_id(4).reason,
        DropReason::Invalid(PermitError::UnknownKey { .. })
    ));
    assert!(matches!(
        by_id(5).reason,
        DropReason::Invalid(PermitError::MissingSignature { .. })
    ));
    assert!(matches!(by_id(6).reason, DropReason::PolicyChanged(_)));
    // The dropped permit is handed back so its object can be re-evaluated.
    assert_eq!(by_id(6).permit.as_ref().unwrap().permit.object, "/bin/cat");
    assert!(dropped
        .iter()
        .any(|d| d.permit_id.is_none() && matches!(d.reason, DropReason::Malformed(_))));
    assert!(dropped
        .iter()
        .any(|d| matches!(d.reason, DropReason::Misfiled { .. })));
    // Every reason names its file when displayed.
    for d in &dropped {
        assert!(d.to_string().contains(&d.file.display().to_string()));
    }
}

#[test]
fn replace_and_remove_are_atomic_file_operations() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(1);
    let store = PermitStore::new(dir.path());
    let p = permit(9, "/usr/bin/git").sign(&k);
    store.replace(&p).unwrap();
    let mut renewed = permit(9, "/usr/bin/git");
    renewed.expires_at += 600 * SEC;
    store.replace(&renewed.sign(&k)).unwrap();
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].permit.as_ref().unwrap().permit.expires_at,
        T0 + 1200 * SEC
    );
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(store.dir()).unwrap().count(), 1);
    assert!(store.remove(9).unwrap());
    assert!(!store.remove(9).unwrap());
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn a_batch_is_one_private_file_listed_with_each_permit_verifiable_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let k = key(1);
    let r = ring(&[&k]);
    let store = PermitStore::new(dir.path());
    let b = batch(0xb1, 50, &k);
    let path = store.insert_batch(&b).unwrap();
    assert_eq!(path, store.batch_path(0xb1));
    assert!(path.ends_with("batch-00000000000000b1.jsonl"));
    assert!(
        store.insert_batch(&b).is_err(),
        "insert_batch refuses a duplicate id"
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(store.dir()), 0o700);
    // One file, no temporary left behind.
    assert_eq!(std::fs::read_dir(store.dir()).unwrap().count(), 1);
    assert_eq!(bridle_trust::store::read_batch(&path).unwrap(), b);

    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 50);
    for (i, l) in listed.iter().enumerate() {
        assert_eq!(l.file, path);
        let p = l.permit.as_ref().unwrap();
        assert_eq!(p.permit.id, i as u64 + 1);
        assert_eq!(p.verify(&r, T0 + SEC), Ok(()));
    }
    let (file, found) = store.find(17).unwrap().unwrap();
    assert_eq!(file, path);
    assert_eq!(found.verify(&r, T0 + SEC), Ok(()));
    assert!(store.find(51).unwrap().is_none());

    let (kept, dropped) = store.load_verified(&r, T0 + SEC, |_| true).unwrap();
    assert_eq!((kept.len(), dropped.len()), (50, 0));
    assert!(store.remove_batch(0xb1).unwrap());
    assert!(!store.remove_batch(0xb1).unwrap());
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn a_restart_with_tampered_batches_drops_only_what_fails_and_old_permit_files_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(1);
    let r = ring(&[&k]);
    let store = PermitStore::new(dir.path());
    // What an earlier version stored: one file per permit.
    store
        .insert(&permit(0x100, "/usr/bin/git").sign(&k))
        .unwrap();
    // A good batch.
    store.insert_batch(&batch(0xb1, 3, &k)).unwrap();
    // A batch with one permit edited in the file.
    let path = store.insert_batch(&batch(0xb2, 3, &k)).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("/usr/bin/tool2", "/usr/bin/nc")).unwrap();
    // A good batch copied under another batch's name.
    std::fs::copy(store.batch_path(0xb1), store.batch_path(0xb3)).unwrap();
    // A batch that is not one.
    std::fs::write(store.batch_path(0xb4), b"{\"batch\":1}\n").unwrap();

    let (kept, dropped) = store.load_verified(&r, T0 + SEC, |_| true).unwrap();
    let mut kept_ids: Vec<u64> = kept.iter().map(|p| p.permit.id).collect();
    kept_ids.sort();
    // 0x100 alone, b1's three, b2's two untouched (1 and 3).
    assert_eq!(kept_ids, vec![1, 1, 2, 3, 3, 0x100]);
    let reasons: Vec<String> = dropped.iter().map(ToString::to_string).collect();
    assert_eq!(dropped.len(), 1 + 3 + 1, "{reasons:#?}");
    let edited = dropped.iter().find(|d| d.file == path).unwrap();
    assert_eq!(
        edited.reason,
        DropReason::Invalid(PermitError::ContentChanged { id: 2 })
    );
    assert_eq!(
        dropped
            .iter()
            .filter(|d| d.file == store.batch_path(0xb3)
                && matches!(d.reason, DropReason::Misfiled { .. }))
            .count(),
        3
    );
    assert!(dropped.iter().any(|d| d.file == store.batch_path(0xb4)
        && d.permit_id.is_none()
        && matches!(d.reason, DropReason::Malformed(_))));
    for d in &dropped {
        assert!(d.to_string().contains(&d.file.display().to_string()));
    }
}

#[test]
fn pruning_removes_what_has_wholly_expired_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(1);
    let store = PermitStore::new(dir.path());
    store
        .insert(&permit(0x100, "/usr/bin/git").sign(&k))
        .unwrap();
    store.insert_batch(&batch(0xb1, 3, &k)).unwrap();
    let mut later = permit(9, "/usr/bin/make");
    later.expires_at = T0 + 1200 * SEC;
    let mixed =
        bridle_trust::PermitBatch::sign(0xb2, T0, vec![permit(8, "/usr/bin/cc"), later], &k);
    store.insert_batch(&mixed).unwrap();
    std::fs::write(store.batch_path(0xb3), b"garbage").unwrap();
    assert_eq!(store.prune_expired(T0 + 599 * SEC).unwrap(), 0);
    // At 600 s the single permit and batch b1 have expired; b2 holds a permit until 1200 s.
    assert_eq!(store.prune_expired(T0 + 600 * SEC).unwrap(), 2);
    assert!(!store.path_of(0x100).exists());
    assert!(!store.batch_path(0xb1).exists());
    assert!(store.batch_path(0xb2).exists());
    assert!(store.batch_path(0xb3).exists(), "unparseable files stay");
    assert_eq!(store.prune_expired(T0 + 1200 * SEC).unwrap(), 1);
}
