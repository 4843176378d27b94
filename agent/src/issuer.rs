//! Issuing the signed permits behind a workload's kernel entries, and renewing them.
//!
//! One permit per rule that has kernel entries: its object is the rule's patterns, its effect
//! and code the rule's, and every kernel entry compiled from that rule carries the permit's id
//! and expiry. A permit is signed and stored before its entries reach the kernel, so every
//! kernel decision traces back to a signed record. Decisions by the policy's `default` come
//! from the workload entry itself and carry no permit.

use anyhow::{Context, Result};
use bridle_engine::{Compiled, Policy, RuleMatcher};
use bridle_trust::{KeyPair, KeyStore, Permit, PermitStore, PolicyRef, SignedPermit, Subject};
use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

/// Signs and stores the permits of one workload.
pub struct Issuer {
    key: Arc<KeyPair>,
    store: PermitStore,
    ttl: Duration,
    /// The live permits by rule index.
    permits: BTreeMap<u32, SignedPermit>,
}

/// Unix time in nanoseconds.
pub fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `CLOCK_BOOTTIME` in nanoseconds, the clock the kernel checks expiries against.
pub fn boot_now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

impl Issuer {
    /// Opens the state directory's keys (generating them on first use) and permit store, and
    /// drops stored permits that have expired.
    pub fn open(state_dir: &Path, ttl: Duration) -> Result<Issuer> {
        let now = unix_now_ns();
        let key = KeyStore::new(state_dir)
            .load_or_generate(now)
            .with_context(|| format!("loading the permit keys under {}", state_dir.display()))?;
        let store = PermitStore::new(state_dir);
        if let Ok(listed) = store.list() {
            for entry in listed {
                if let Ok(permit) = &entry.permit {
                    if permit.permit.expires_at <= now {
                        let _ = store.remove(permit.permit.id);
                    }
                }
            }
        }
        Ok(Issuer {
            key: Arc::new(key),
            store,
            ttl,
            permits: BTreeMap::new(),
        })
    }

    /// The signing key (the audit trail's checkpoints use it too).
    pub fn key(&self) -> Arc<KeyPair> {
        Arc::clone(&self.key)
    }

    /// How long a permit lives without renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a permit for each rule index in `rules`, for `subject`.
    pub fn issue(
        &mut self,
        policy: &Policy,
        compiled: &Compiled,
        subject: &Subject,
        rules: impl IntoIterator<Item = u32>,
    ) -> Result<()> {
        let policy_ref = PolicyRef {
            name: policy.name.clone(),
            version: policy.version,
            digest: policy.digest_hex(),
        };
        let now = unix_now_ns();
        for index in rules {
            let Some(rule) = compiled.rules.get(index as usize) else {
                continue;
            };
            let (action, object) = policy
                .rules
                .iter()
                .find(|r| r.name == rule.name)
                .map(|r| match &r.matcher {
                    RuleMatcher::Exec(patterns) => (
                        "exec",
                        patterns
                            .iter()
                            .map(|p| p.as_str().to_owned())
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                    RuleMatcher::Connect(objects) => (
                        "connect",
                        objects
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                })
                .unwrap_or(("unknown", String::new()));
            let permit = Permit {
                id: Permit::new_id().context("drawing a permit id")?,
                policy: policy_ref.clone(),
                subject: subject.clone(),
                action: action.to_owned(),
                object,
                effect: rule.effect,
                code: rule.code,
                rule: Some(rule.name.clone()),
                issued_at: now,
                expires_at: now + self.ttl.as_nanos() as u64,
                key_id: String::new(),
            }
            .sign(&self.key);
            self.store
                .insert(&permit)
                .with_context(|| format!("storing the permit for rule {}", rule.name))?;
            self.permits.insert(index, permit);
        }
        Ok(())
    }

    /// Re-signs every live permit with a fresh expiry (same ids) and stores it.
    pub fn renew(&mut self) -> Result<()> {
        let now = unix_now_ns();
        for permit in self.permits.values_mut() {
            let mut fresh = permit.permit.clone();
            fresh.issued_at = now;
            fresh.expires_at = now + self.ttl.as_nanos() as u64;
            let signed = fresh.sign(&self.key);
            self.store
                .replace(&signed)
                .with_context(|| format!("renewing permit {:016x}", signed.permit.id))?;
            *permit = signed;
        }
        Ok(())
    }

    /// How many permits are live (one per rule with entries, host rules included).
    pub fn issued(&self) -> usize {
        self.permits.len()
    }

    /// The permit id and kernel (`CLOCK_BOOTTIME`) expiry for a rule's entries.
    pub fn stamp(&self, rule: u32) -> Option<(u64, u64)> {
        let permit = self.permits.get(&rule)?;
        let left = permit.permit.expires_at.saturating_sub(unix_now_ns());
        Some((permit.permit.id, boot_now_ns() + left))
    }
}
