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
