//! Signed permits: every tamper case is a distinct error.

mod common;
use bridle_trust::keys::Algorithm;
use bridle_trust::{Code, Effect, PermitError, SignedPermit};
use common::*;

fn signed() -> (bridle_trust::KeyPair, SignedPermit) {
    let k = key(1);
    let p = permit(7, "/usr/bin/git").sign(&k);
    (k, p)
}

#[test]
fn a_fresh_permit_verifies_and_names_its_key() {
    let (k, p) = signed();
    assert_eq!(p.permit.key_id, k.key_id());
    assert_eq!(p.verify(&ring(&[&k]), T0 + SEC), Ok(()));
    // JSON round trip keeps it valid.
    let back = SignedPermit::from_json(&p.to_json()).unwrap();
    assert_eq!(back, p);
    assert_eq!(back.verify(&ring(&[&k]), T0 + SEC), Ok(()));
}

#[test]
fn the_canonical_encoding_is_deterministic_and_domain_separated() {
    let a = permit(7, "/usr/bin/git");
    assert_eq!(a.canonical_bytes(), a.clone().canonical_bytes());
    assert!(a.canonical_bytes().starts_with(b"bridle-permit-v1\0"));
    // Moving bytes between adjacent strings changes the encoding (length prefixes).
    let mut b = a.clone();
    b.action = "exec/".into();
    b.object = "usr/bin/git".into();
    assert_ne!(a.canonical_bytes(), b.canonical_bytes());
}

#[test]
fn a_missing_signature_is_reported_by_name() {
    let (k, p) = signed();
    let mut no_ed = p.clone();
    no_ed.ed25519.clear();
    assert_eq!(
        no_ed.verify(&ring(&[&k]), T0),
        Err(PermitError::MissingSignature {
            id: 7,
            which: Algorithm::Ed25519
        })
    );
    let mut no_ml = p.clone();
    no_ml.mldsa65.clear();
    assert_eq!(
        no_ml.verify(&ring(&[&k]), T0),
        Err(PermitError::MissingSignature {
            id: 7,
            which: Algorithm::MlDsa65
        })
    );
    // Absent from the JSON entirely is the same as empty.
    let mut json: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
    json.as_object_mut().unwrap().remove("mldsa65");
    let parsed: SignedPermit = serde_json::from_value(json).unwrap();
    assert!(matches!(
        parsed.verify(&ring(&[&k]), T0),
        Err(PermitError::MissingSignature {
            which: Algorithm::MlDsa65,
            ..
        })
    ));
}

#[test]
fn a_signature_swapped_from_another_permit_fails() {
    let k = key(1);
    let a = permit(7, "/usr/bin/git").sign(&k);
    let b = permit(8, "/usr/bin/curl").sign(&k);
    let mut swapped = a.clone();
    swapped.ed25519 = b.ed25519.clone();
    assert_eq!(
        swapped.verify(&ring(&[&k]), T0),
        Err(PermitError::BadSignature {
            id: 7,
            which: Algorithm::Ed25519
        })
    );
    let mut swapped = a.clone();
    swapped.mldsa65 = b.mldsa65.clone();
    assert_eq!(
        swapped.verify(&ring(&[&k]), T0),
        Err(PermitError::BadSignature {
            id: 7,
            which: Algorithm::MlDsa65
        })
    );
    // Both swapped: indistinguishable from a changed permit.
    let mut both = a.clone();
    both.ed25519 = b.ed25519;
    both.mldsa65 = b.mldsa65;
    assert_eq!(
        both.verify(&ring(&[&k]), T0),
        Err(PermitError::ContentChanged { id: 7 })
    );
}

#[test]
fn a_foreign_or_unknown_key_is_refused() {
    let (k, p) = signed();
    let other = key(2);
    assert_eq!(
        p.verify(&ring(&[&other]), T0),
        Err(PermitError::UnknownKey {
            id: 7,
            key_id: k.key_id().to_string()
        })
    );
    // A permit signed by a foreign key that claims our key id.
    let mut forged = permit(7, "/usr/bin/git").sign(&other);
    forged.permit.key_id = k.key_id().to_string();
    assert_eq!(
        forged.verify(&ring(&[&k]), T0),
        Err(PermitError::ContentChanged { id: 7 })
    );
}

#[test]
fn validity_is_enforced_for_the_permit_and_the_key() {
    let (k, p) = signed();
    let r = ring(&[&k]);
    assert!(matches!(
        p.verify(&r, T0 - 1),
        Err(PermitError::NotYetValid { .. })
    ));
    assert_eq!(p.verify(&r, T0 + 600 * SEC - 1), Ok(()));
    assert!(matches!(
        p.verify(&r, T0 + 600 * SEC),
        Err(PermitError::Expired { .. })
    ));
    let short =
        bridle_trust::KeyPair::from_seeds(&[9; 32], &[9; 32], T0 - SEC, Some(T0 + 60 * SEC));
    let p = permit(7, "/usr/bin/git").sign(&short);
    let r = ring(&[&short]);
    assert_eq!(p.verify(&r, T0 + 59 * SEC), Ok(()));
    assert!(matches!(
        p.verify(&r, T0 + 60 * SEC),
        Err(PermitError::KeyExpired { .. })
    ));
}

#[test]
fn malformed_permits_are_refused_before_any_signature_check() {
    let k = key(1);
    let p = permit(0, "/usr/bin/git").sign(&k);
    assert!(matches!(
        p.verify(&ring(&[&k]), T0),
        Err(PermitError::Malformed { .. })
    ));
    let mut q = permit(5, "/usr/bin/git");
    q.expires_at = q.issued_at;
    let q = q.sign(&k);
    assert!(matches!(
        q.verify(&ring(&[&k]), T0),
        Err(PermitError::Malformed { .. })
    ));
    // Fields the signatures do not cover are rejected at parse time.
    let mut json: serde_json::Value =
        serde_json::from_slice(&permit(5, "x").sign(&k).to_json()).unwrap();
    json["permit"]["extra"] = serde_json::json!(1);
    assert!(serde_json::from_value::<SignedPermit>(json).is_err());
}

#[test]
fn every_changed_field_fails() {
    let (k, p) = signed();
    let r = ring(&[&k]);
    let mut cases: Vec<SignedPermit> = Vec::new();
    let mut push = |f: &dyn Fn(&mut SignedPermit)| {
        let mut c = p.clone();
        f(&mut c);
        cases.push(c);
    };
    push(&|c| c.permit.id = 8);
    push(&|c| c.permit.policy.name.push('x'));
    push(&|c| c.permit.policy.version = Some(4));
    push(&|c| c.permit.policy.version = None);
    push(&|c| c.permit.policy.digest = "cd".repeat(32));
    push(&|c| c.permit.subject.cgroup_id += 1);
    push(&|c| c.permit.subject.cgroup_path.push('x'));
    push(&|c| c.permit.action = "connect".into());
    push(&|c| c.permit.object = "/usr/bin/gi".into());
    push(&|c| c.permit.effect = Effect::Refuse);
    push(&|c| c.permit.code = Code::Observed);
    push(&|c| c.permit.rule = None);
    push(&|c| c.permit.issued_at -= 1);
    push(&|c| c.permit.expires_at += 1);
    for (i, c) in cases.iter().enumerate() {
        assert_eq!(
            c.verify(&r, T0 + SEC),
            Err(PermitError::ContentChanged { id: c.permit.id }),
            "case {i}"
        );
    }
}

#[test]
fn every_changed_byte_of_the_signed_encoding_or_the_file_fails() {
    let (k, p) = signed();
    let public = k.public();
    let bytes = p.permit.canonical_bytes();
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        let check = public.check(&b, &p.ed25519, &p.mldsa65);
        assert!(
            !check.ed25519 && !check.mldsa65,
            "byte {i} of the canonical encoding"
        );
    }
    // Every byte of the permit file (compact JSON) outside the signatures: a changed byte either
    // makes it unparseable or makes it fail verification.
    let r = ring(&[&k]);
    let json = serde_json::to_vec(&p).unwrap();
    let sig_start = json.windows(9).position(|w| w == b"\"ed25519\"").unwrap();
    for i in 0..sig_start {
        for replacement in [b'0', b'a', b'"', b'7'] {
            if json[i] == replacement {
                continue;
            }
            let mut j = json.clone();
            j[i] = replacement;
            if let Ok(parsed) = SignedPermit::from_json(&j) {
                assert!(
                    parsed.verify(&r, T0 + SEC).is_err(),
                    "byte {i} -> {}",
                    replacement as char
                );
            }
        }
    }
    // Sampled bytes of each signature: only that half fails.
    for i in (0..p.ed25519.len()).step_by(7) {
        let mut c = p.clone();
        c.ed25519[i] ^= 0x80;
        assert_eq!(
            c.verify(&r, T0),
            Err(PermitError::BadSignature {
                id: 7,
                which: Algorithm::Ed25519
            })
        );
    }
    for i in (0..p.mldsa65.len()).step_by(97) {
        let mut c = p.clone();
        c.mldsa65[i] ^= 0x80;
        assert_eq!(
            c.verify(&r, T0),
            Err(PermitError::BadSignature {
                id: 7,
                which: Algorithm::MlDsa65
            })
        );
    }
}
