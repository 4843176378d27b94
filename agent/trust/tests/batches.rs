//! Permit batches: one hybrid signature over a Merkle root, every permit still verifiable on its
//! own, and every tamper case a distinct error.

mod common;
use bridle_trust::batch::{BatchHeader, SignedHeader, BATCH_DOMAIN};
use bridle_trust::keys::Algorithm;
use bridle_trust::{PermitBatch, PermitError, SignedPermit};
use common::*;

const B: u64 = 0xba7c;

type HeaderEdit = Box<dyn Fn(&mut BatchHeader)>;

fn ok_all(results: &[Result<(), PermitError>]) -> bool {
    results.iter().all(Result::is_ok)
}

#[test]
fn every_member_of_every_size_verifies_alone_and_in_its_file() {
    let k = key(1);
    let r = ring(&[&k]);
    for n in [1, 2, 3, 5, 8, 9, 31, 100] {
        let b = batch(B, n, &k);
        assert_eq!(b.header.count, n);
        assert_eq!(b.header.key_id, k.key_id());
        assert_eq!(b.header.expires_at, T0 + 600 * SEC);
        assert!(b.entries.iter().all(|e| e.permit.key_id == k.key_id()));
        assert!(ok_all(&b.verify(&r, T0 + SEC)), "{n}");
        let members = b.signed_permits();
        assert_eq!(members.len() as u64, n);
        for (i, m) in members.iter().enumerate() {
            let proof = m.batch.as_ref().unwrap();
            assert_eq!(proof.index, i as u64);
            assert_eq!(m.verify(&r, T0 + SEC), Ok(()), "{n} / {i}");
            // The stand-alone form survives its JSON transport.
            let back = SignedPermit::from_json(&m.to_json()).unwrap();
            assert_eq!(&back, m);
            assert_eq!(back.verify(&r, T0 + SEC), Ok(()));
        }
        // So does the batch file.
        let back = PermitBatch::from_jsonl(&b.to_jsonl()).unwrap();
        assert_eq!(back, b);
        assert_eq!(b.signed_permit(n), Some(members[n as usize - 1].clone()));
        assert_eq!(b.signed_permit(n + 1), None);
    }
}

#[test]
fn one_signature_covers_the_header_and_the_header_commits_to_every_leaf() {
    let k = key(1);
    let b = batch(B, 4, &k);
    let check = k
        .public()
        .check(&b.header.signed_bytes(), &b.ed25519, &b.mldsa65);
    assert!(check.both());
    assert!(b.header.signed_bytes().starts_with(BATCH_DOMAIN));
    // A permit's leaf is not its stand-alone signed message, so neither form stands for the
    // other.
    let p = &b.entries[0].permit;
    assert_ne!(p.leaf_bytes(), p.canonical_bytes());
    assert!(p.leaf_bytes().starts_with(b"bridle-permit-leaf-v1\0"));
    // Changing any byte of the header's signed encoding breaks both halves.
    let bytes = b.header.signed_bytes();
    for i in 0..bytes.len() {
        let mut c = bytes.clone();
        c[i] ^= 0x01;
        let check = k.public().check(&c, &b.ed25519, &b.mldsa65);
        assert!(!check.ed25519 && !check.mldsa65, "byte {i}");
    }
}

#[test]
fn an_edited_permit_fails_alone_as_changed_content() {
    let k = key(1);
    let r = ring(&[&k]);
    let b = batch(B, 5, &k);
    // Stand-alone: every field of the permit is covered by its leaf.
    let m = b.signed_permit(3).unwrap();
    let mut cases: Vec<SignedPermit> = Vec::new();
    let mut push = |f: &dyn Fn(&mut SignedPermit)| {
        let mut c = m.clone();
        f(&mut c);
        cases.push(c);
    };
    push(&|c| c.permit.id = 8);
    push(&|c| c.permit.policy.name.push('x'));
    push(&|c| c.permit.policy.version = None);
    push(&|c| c.permit.policy.digest = "cd".repeat(32));
    push(&|c| c.permit.subject.cgroup_id += 1);
    push(&|c| c.permit.subject.cgroup_path.push('x'));
    push(&|c| c.permit.action = "connect".into());
    push(&|c| c.permit.object = "/usr/bin/nc".into());
    push(&|c| c.permit.effect = bridle_trust::Effect::Refuse);
    push(&|c| c.permit.code = bridle_trust::Code::Observed);
    push(&|c| c.permit.rule = None);
    push(&|c| c.permit.issued_at -= 1);
    push(&|c| c.permit.expires_at -= 1);
    push(&|c| c.permit.key_id = key(2).key_id().to_string());
    for (i, c) in cases.iter().enumerate() {
        assert_eq!(
            c.verify(&r, T0 + SEC),
            Err(PermitError::ContentChanged { id: c.permit.id }),
            "case {i}"
        );
    }
    // In the file: only the edited permit fails, the others still prove.
    let mut file = b.clone();
    file.entries[2].permit.object = "/usr/bin/nc".into();
    let results = file.verify(&r, T0 + SEC);
    assert_eq!(results[2], Err(PermitError::ContentChanged { id: 3 }));
    assert!(results.iter().enumerate().all(|(i, r)| i == 2 || r.is_ok()));
}

#[test]
fn a_wrong_inclusion_proof_is_a_bad_proof() {
    let k = key(1);
    let r = ring(&[&k]);
    let b = batch(B, 6, &k);
    let m = b.signed_permit(2).unwrap();
    let bad = |c: &SignedPermit| {
        assert_eq!(
            c.verify(&r, T0 + SEC),
            Err(PermitError::BadProof { id: 2, batch: B })
        )
    };
    let proof = m.batch.as_ref().unwrap();
    // Each sibling hash changed.
    for i in 0..proof.path.len() {
        let mut c = m.clone();
        c.batch.as_mut().unwrap().path[i][7] ^= 0x40;
        bad(&c);
    }
    // Another permit's path, another index, a path too short or too long, none at all.
    let mut c = m.clone();
    c.batch.as_mut().unwrap().path = b.signed_permit(5).unwrap().batch.unwrap().path;
    bad(&c);
    for index in [0, 2, 5, 6, u64::MAX] {
        let mut c = m.clone();
        c.batch.as_mut().unwrap().index = index;
        bad(&c);
    }
    let mut c = m.clone();
    c.batch.as_mut().unwrap().path.pop();
    bad(&c);
    let mut c = m.clone();
    c.batch.as_mut().unwrap().path.push([0; 32]);
    bad(&c);
    let mut c = m.clone();
    c.batch.as_mut().unwrap().path.clear();
    bad(&c);
    // An edited permit whose leaf hash was recomputed to match: the proof no longer leads to
    // the signed root.
    let mut c = m.clone();
    c.permit.object = "/usr/bin/nc".into();
    c.batch.as_mut().unwrap().leaf = c.permit.leaf_hash();
    bad(&c);
    // The same in a file: the stored leaves no longer make the signed root, so nothing in the
    // file proves.
    let mut file = b.clone();
    file.entries[1].permit.object = "/usr/bin/nc".into();
    file.entries[1].leaf = file.entries[1].permit.leaf_hash();
    for (i, result) in file.verify(&r, T0 + SEC).into_iter().enumerate() {
        assert_eq!(
            result,
            Err(PermitError::BadProof {
                id: i as u64 + 1,
                batch: B
            })
        );
    }
}

#[test]
fn an_edited_header_is_a_changed_batch() {
    let k = key(1);
    let other = key(2);
    let r = ring(&[&k, &other]);
    let b = batch(B, 4, &k);
    let m = b.signed_permit(1).unwrap();
    let edits: Vec<HeaderEdit> = vec![
        Box::new(|h| h.id += 1),
        Box::new(|h| h.issued_at -= SEC),
        Box::new(|h| h.expires_at += 3600 * SEC),
        Box::new(|h| h.count += 1),
        Box::new(|h| h.root[0] ^= 1),
        // Another key the verifier knows: its signatures are not these.
        Box::new(|h| h.key_id = key(2).key_id().to_string()),
    ];
    for (i, edit) in edits.iter().enumerate() {
        let mut c = m.clone();
        edit(&mut c.batch.as_mut().unwrap().header);
        let batch = c.batch.as_ref().unwrap().header.id;
        assert_eq!(
            c.verify(&r, T0 + SEC),
            Err(PermitError::BatchChanged { id: 1, batch }),
            "case {i}"
        );
        let mut file = b.clone();
        edit(&mut file.header);
        let batch = file.header.id;
        for (j, result) in file.verify(&r, T0 + SEC).into_iter().enumerate() {
            assert_eq!(
                result,
                Err(PermitError::BatchChanged {
                    id: j as u64 + 1,
                    batch
                }),
                "case {i}, permit {j}"
            );
        }
    }
}

#[test]
fn a_removed_signature_is_missing_and_a_swapped_one_is_bad() {
    let k = key(1);
    let r = ring(&[&k]);
    let b = batch(B, 3, &k);
    let other = batch(B + 1, 3, &k);
    for which in [Algorithm::Ed25519, Algorithm::MlDsa65] {
        let mut file = b.clone();
        match which {
            Algorithm::Ed25519 => file.ed25519.clear(),
            Algorithm::MlDsa65 => file.mldsa65.clear(),
        }
        assert!(file.verify(&r, T0).iter().enumerate().all(|(i, r)| *r
            == Err(PermitError::MissingSignature {
                id: i as u64 + 1,
                which
            })));
        // The member handed out from such a file misses it too.
        assert_eq!(
            file.signed_permit(2).unwrap().verify(&r, T0),
            Err(PermitError::MissingSignature { id: 2, which })
        );
    }
    // Absent from the header line entirely is the same as empty.
    let text = String::from_utf8(b.to_jsonl()).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut head: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    head.as_object_mut().unwrap().remove("ed25519");
    lines[0] = head.to_string();
    let file = PermitBatch::from_jsonl((lines.join("\n") + "\n").as_bytes()).unwrap();
    assert_eq!(
        file.verify(&r, T0)[0],
        Err(PermitError::MissingSignature {
            id: 1,
            which: Algorithm::Ed25519
        })
    );
    // One half swapped in from another batch of the same key: that half is bad.
    let mut file = b.clone();
    file.ed25519 = other.ed25519.clone();
    assert_eq!(
        file.verify(&r, T0)[1],
        Err(PermitError::BadSignature {
            id: 2,
            which: Algorithm::Ed25519
        })
    );
    let mut m = b.signed_permit(2).unwrap();
    m.mldsa65 = other.mldsa65.clone();
    assert_eq!(
        m.verify(&r, T0),
        Err(PermitError::BadSignature {
            id: 2,
            which: Algorithm::MlDsa65
        })
    );
    // Both swapped: the header is not the one they sign.
    let mut file = b.clone();
    file.ed25519 = other.ed25519.clone();
    file.mldsa65 = other.mldsa65.clone();
    assert_eq!(
        file.verify(&r, T0)[0],
        Err(PermitError::BatchChanged { id: 1, batch: B })
    );
}

#[test]
fn a_foreign_key_is_unknown_and_one_posing_as_ours_is_a_changed_batch() {
    let k = key(1);
    let foreign = key(2);
    let b = batch(B, 3, &foreign);
    assert_eq!(
        b.verify(&ring(&[&k]), T0)[0],
        Err(PermitError::UnknownKey {
            id: 1,
            key_id: foreign.key_id().to_string()
        })
    );
    assert_eq!(
        b.signed_permit(3).unwrap().verify(&ring(&[&k]), T0),
        Err(PermitError::UnknownKey {
            id: 3,
            key_id: foreign.key_id().to_string()
        })
    );
    // Signed by the foreign key, claiming ours.
    let mut forged = b.clone();
    forged.header.key_id = k.key_id().to_string();
    assert_eq!(
        forged.verify(&ring(&[&k]), T0)[0],
        Err(PermitError::BatchChanged { id: 1, batch: B })
    );
}

#[test]
fn reordered_leaves_are_misplaced_and_a_renumbered_reordering_breaks_the_proof() {
    let k = key(1);
    let r = ring(&[&k]);
    let b = batch(B, 6, &k);
    // Lines moved as they are: the two moved permits are named, the rest still prove.
    let mut file = b.clone();
    file.entries.swap(1, 4);
    let results = file.verify(&r, T0 + SEC);
    assert_eq!(
        results[1],
        Err(PermitError::Misplaced {
            id: 5,
            batch: B,
            index: 4,
            position: 1
        })
    );
    assert_eq!(
        results[4],
        Err(PermitError::Misplaced {
            id: 2,
            batch: B,
            index: 1,
            position: 4
        })
    );
    assert!([0, 2, 3, 5].iter().all(|&i| results[i].is_ok()));
    // The same through the text of the file.
    let text = String::from_utf8(b.to_jsonl()).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(2, 5);
    let parsed = PermitBatch::from_jsonl((lines.join("\n") + "\n").as_bytes()).unwrap();
    assert!(matches!(
        parsed.verify(&r, T0 + SEC)[1],
        Err(PermitError::Misplaced { id: 5, .. })
    ));
    // Moved and renumbered to look in place: the leaves no longer make the signed root.
    let mut file = b.clone();
    file.entries.swap(1, 4);
    file.entries[1].index = 1;
    file.entries[4].index = 4;
    let results = file.verify(&r, T0 + SEC);
    assert!(results
        .iter()
        .all(|r| matches!(r, Err(PermitError::BadProof { batch: B, .. }))));
    // A moved member handed out alone carries the index it was signed at, and a proof for
    // another index does not hold.
    let mut m = b.signed_permit(2).unwrap();
    m.batch.as_mut().unwrap().path = b.signed_permit(5).unwrap().batch.unwrap().path;
    m.batch.as_mut().unwrap().index = 4;
    assert_eq!(
        m.verify(&r, T0 + SEC),
        Err(PermitError::BadProof { id: 2, batch: B })
    );
}

#[test]
fn a_removed_or_added_permit_leaves_the_batch_incomplete() {
    let k = key(1);
    let r = ring(&[&k]);
    let b = batch(B, 4, &k);
    let mut removed = b.clone();
    removed.entries.remove(3);
    assert_eq!(
        removed.verify(&r, T0)[0],
        Err(PermitError::BatchIncomplete {
            id: 1,
            batch: B,
            count: 4,
            found: 3
        })
    );
    let mut added = b.clone();
    added.entries.push(added.entries[0].clone());
    assert!(added
        .verify(&r, T0)
        .iter()
        .all(|r| matches!(r, Err(PermitError::BatchIncomplete { found: 5, .. }))));
    // The members that remain, handed out alone, have no proof that holds.
    let m = removed.signed_permit(2).unwrap();
    assert!(m.verify(&r, T0).is_err());
}

#[test]
fn neither_form_downgrades_to_the_other() {
    let k = key(1);
    let r = ring(&[&k]);
    let b = batch(B, 3, &k);
    // A batch member stripped of its batch: its signatures do not cover the permit alone.
    let mut alone = b.signed_permit(2).unwrap();
    alone.batch = None;
    assert_eq!(
        alone.verify(&r, T0),
        Err(PermitError::ContentChanged { id: 2 })
    );
    // A permit signed alone dressed up as a batch member: its signatures do not cover a header.
    let single = permit(2, "/usr/bin/tool2").sign(&k);
    let mut dressed = b.signed_permit(2).unwrap();
    dressed.ed25519 = single.ed25519.clone();
    dressed.mldsa65 = single.mldsa65.clone();
    assert_eq!(
        dressed.verify(&r, T0),
        Err(PermitError::BatchChanged { id: 2, batch: B })
    );
}

#[test]
fn validity_is_enforced_for_members_and_the_batch_key() {
    let k = key(1);
    let r = ring(&[&k]);
    let b = batch(B, 2, &k);
    let m = b.signed_permit(1).unwrap();
    assert!(matches!(
        m.verify(&r, T0 - 1),
        Err(PermitError::NotYetValid { .. })
    ));
    assert_eq!(m.verify(&r, T0 + 600 * SEC - 1), Ok(()));
    assert!(matches!(
        m.verify(&r, T0 + 600 * SEC),
        Err(PermitError::Expired { .. })
    ));
    assert!(matches!(
        b.verify(&r, T0 + 600 * SEC)[1],
        Err(PermitError::Expired { id: 2, .. })
    ));
    // A key that expires: nothing it signed verifies afterwards, nor a batch it signed late.
    let short =
        bridle_trust::KeyPair::from_seeds(&[9; 32], &[9; 32], T0 - SEC, Some(T0 + 60 * SEC));
    let rs = ring(&[&short]);
    let b = batch(B, 2, &short);
    assert!(ok_all(&b.verify(&rs, T0 + 59 * SEC)));
    assert!(matches!(
        b.verify(&rs, T0 + 60 * SEC)[0],
        Err(PermitError::KeyExpired { .. })
    ));
    let late = PermitBatch::sign(B, T0 + 61 * SEC, vec![permit(1, "/usr/bin/git")], &short);
    assert!(matches!(
        late.verify(&rs, T0 + 30 * SEC)[0],
        Err(PermitError::KeyExpired { .. })
    ));
}

#[test]
fn a_header_that_disowns_its_permits_is_malformed() {
    // Only a faulty signer can make these: the header is signed, but what it says of its
    // permits is not so.
    let k = key(1);
    let r = ring(&[&k]);
    let b = batch(B, 2, &k);
    let mut header = b.header.clone();
    header.expires_at = T0 + 60 * SEC;
    let sig = k.sign(&header.signed_bytes());
    let short = PermitBatch {
        header,
        ed25519: sig.ed25519,
        mldsa65: sig.mldsa65,
        entries: b.entries.clone(),
    };
    assert!(matches!(
        short.verify(&r, T0)[0],
        Err(PermitError::Malformed { id: 1, .. })
    ));
    let m = batch(B, 1, &k).signed_permit(1).unwrap();
    let mut zero = m.clone();
    zero.permit.id = 0;
    assert!(matches!(
        zero.verify(&r, T0),
        Err(PermitError::Malformed { id: 0, .. })
    ));
}

#[test]
fn every_changed_byte_of_a_batch_file_fails_or_does_not_parse() {
    let k = key(1);
    let r = ring(&[&k]);
    let b = batch(B, 3, &k);
    let bytes = b.to_jsonl();
    let first_end = bytes.iter().position(|c| *c == b'\n').unwrap();
    let head: SignedHeader = serde_json::from_slice(&bytes[..first_end]).unwrap();
    assert_eq!(head.batch, b.header);
    // The header line up to its signatures, and every byte of the permit lines.
    let sig_start = bytes
        .windows(10)
        .position(|w| w == b"\"ed25519\":")
        .unwrap();
    let positions = (0..sig_start).chain(first_end + 1..bytes.len());
    for i in positions {
        for replacement in [b'0', b'a', b'"', b'7', b'\n'] {
            if bytes[i] == replacement {
                continue;
            }
            let mut c = bytes.clone();
            c[i] = replacement;
            if let Ok(parsed) = PermitBatch::from_jsonl(&c) {
                assert!(
                    !ok_all(&parsed.verify(&r, T0 + SEC)) || parsed == b,
                    "byte {i} -> {}",
                    replacement as char
                );
            }
        }
    }
}

#[test]
fn rotation_keeps_old_batches_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let store = bridle_trust::KeyStore::new(dir.path());
    let old = store.generate(T0 - 10 * SEC, None).unwrap();
    let old_batch = batch(B, 3, &old);
    let new = store.generate(T0, None).unwrap();
    let new_batch = batch(B + 1, 3, &store.load_current().unwrap());
    assert_eq!(new_batch.header.key_id, new.key_id());
    let r = store.keyring().unwrap();
    assert!(ok_all(&old_batch.verify(&r, T0 + SEC)));
    assert!(ok_all(&new_batch.verify(&r, T0 + SEC)));
    assert_eq!(
        old_batch.signed_permit(2).unwrap().verify(&r, T0 + SEC),
        Ok(())
    );
}
