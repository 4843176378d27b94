//! Issuing the signed permits behind a workload's kernel entries, and renewing them.
//!
//! One permit per rule that has kernel entries: its object is the rule's patterns, its effect
//! and code the rule's, and every kernel entry compiled from that rule carries the permit's id
//! and expiry. A permit is signed and stored before its entries are in force (they may be
//! written meanwhile into a slot no workload judges by), so every kernel decision traces back
//! to a signed record. Decisions by the policy's `default` come
//! from the workload entry itself and carry no permit.
//!
//! Each issuance and each renewal signs its permits as one batch (one hybrid signature over the
//! Merkle root of the permits, `bridle_trust::batch`) stored in one file; a renewal stores the
//! new batch before it removes the ones it replaces, so a crash in between leaves both, and the
//! older one lapses and is pruned.

use anyhow::{Context, Result};
use bridle_engine::{Compiled, CompiledRule, Policy, Rule, RuleMatcher};
use bridle_trust::{KeyPair, KeyStore, Permit, PermitBatch, PermitStore, PolicyRef, Subject};
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::Arc,
    time::Duration,
};

/// Signs and stores the permits of one workload.
pub struct Issuer {
    key: Arc<KeyPair>,
    store: PermitStore,
    ttl: Duration,
    /// The live permits by rule index.
    permits: BTreeMap<u32, Permit>,
    /// The stored batches that hold them.
    batches: Vec<u64>,
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
    /// drops stored permits and batches that have expired.
    pub fn open(state_dir: &Path, ttl: Duration) -> Result<Issuer> {
        let now = unix_now_ns();
        let key = KeyStore::new(state_dir)
            .load_or_generate(now)
            .with_context(|| format!("loading the permit keys under {}", state_dir.display()))?;
        let store = PermitStore::new(state_dir);
        // Best effort: what is left expires anyway and is pruned next time.
        let _ = store.prune_expired(now);
        Ok(Issuer {
            key: Arc::new(key),
            store,
            ttl,
            permits: BTreeMap::new(),
            batches: Vec::new(),
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

    /// Issues a permit for each rule index in `rules`, for `subject`: all of them signed as one
    /// batch and stored in one file before this returns.
    pub fn issue(
        &mut self,
        policy: &Policy,
        compiled: &Compiled,
        subject: &Subject,
        rules: impl IntoIterator<Item = u32>,
    ) -> Result<()> {
        self.issue_alongside(policy, compiled, subject, rules, |_| ())
    }

    /// [`Issuer::issue`], running `alongside` on this thread while the permits are built,
    /// signed and stored on another. `alongside` gets each rule's kernel stamp (what
    /// [`Issuer::stamp`] gives once this returns), so it can write entries that carry the
    /// permits' ids into a slot no workload judges by yet. Its result is returned only once the
    /// batch is stored: the caller switches to the slot after that, so no entry is in force
    /// before its permit is signed and on disk.
    pub fn issue_alongside<R>(
        &mut self,
        policy: &Policy,
        compiled: &Compiled,
        subject: &Subject,
        rules: impl IntoIterator<Item = u32>,
        alongside: impl FnOnce(&dyn Fn(u32) -> Option<(u64, u64)>) -> R,
    ) -> Result<R> {
        let rules: Vec<(u32, &CompiledRule)> = rules
            .into_iter()
            .filter_map(|index| Some((index, compiled.rules.get(index as usize)?)))
            .collect();
        if rules.is_empty() {
            return Ok(alongside(&|_| None));
        }
        let now = unix_now_ns();
        let expires_at = now + self.ttl.as_nanos() as u64;
        let ids = Permit::new_ids(rules.len()).context("drawing permit ids")?;
        let drafted: HashMap<u32, u64> = rules
            .iter()
            .zip(&ids)
            .map(|((index, _), id)| (*index, *id))
            .collect();
        // Every permit of the batch has the same expiry, so one kernel time.
        let boot_expiry = kernel_expiry(expires_at);
        let stamp = |rule: u32| drafted.get(&rule).map(|id| (*id, boot_expiry));
        // The compiled reference carries the digest already: recomputing it would re-encode
        // the whole policy.
        let policy_ref = PolicyRef {
            name: compiled.policy.name.clone(),
            version: compiled.policy.version,
            digest: compiled.policy.digest.clone(),
        };
        let indexes: Vec<u32> = rules.iter().map(|(index, _)| *index).collect();
        let (key, store) = (&self.key, &self.store);
        let (batch, done) = std::thread::scope(|scope| {
            let sealing = scope.spawn(move || {
                let permits =
                    draft_permits(policy, &policy_ref, subject, &rules, &ids, now, expires_at);
                sign_and_store(key, store, now, permits)
            });
            let done = alongside(&stamp);
            let batch = sealing
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the permit signer panicked")));
            (batch, done)
        });
        let batch = batch?;
        self.batches.push(batch.header.id);
        for (index, entry) in indexes.into_iter().zip(batch.entries) {
            self.permits.insert(index, entry.permit);
        }
        Ok(done)
    }

    /// Re-signs every live permit with a fresh expiry (same ids) as one new batch, stores it,
    /// then removes the batches it replaces.
    pub fn renew(&mut self) -> Result<()> {
        if self.permits.is_empty() {
            return Ok(());
        }
        let now = unix_now_ns();
        let expires_at = now + self.ttl.as_nanos() as u64;
        let fresh: Vec<Permit> = self
            .permits
            .values()
            .map(|p| Permit {
                issued_at: now,
                expires_at,
                ..p.clone()
            })
            .collect();
        let batch =
            sign_and_store(&self.key, &self.store, now, fresh).context("renewing the permits")?;
        for (permit, entry) in self.permits.values_mut().zip(batch.entries) {
            *permit = entry.permit;
        }
        for old in std::mem::replace(&mut self.batches, vec![batch.header.id]) {
            // Best effort: a batch left behind lapses with its permits and is pruned.
            let _ = self.store.remove_batch(old);
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
        Some((permit.id, kernel_expiry(permit.expires_at)))
    }
}

/// `expires_at` (unix time, ns) on `CLOCK_BOOTTIME`, the clock the kernel checks expiries
/// against.
fn kernel_expiry(expires_at: u64) -> u64 {
    boot_now_ns() + expires_at.saturating_sub(unix_now_ns())
}

/// Signs `permits` as one batch and stores it.
fn sign_and_store(
    key: &KeyPair,
    store: &PermitStore,
    now: u64,
    permits: Vec<Permit>,
) -> Result<PermitBatch> {
    let id = Permit::new_id().context("drawing a batch id")?;
    let batch = PermitBatch::sign(id, now, permits, key);
    store
        .insert_batch(&batch)
        .with_context(|| format!("storing permit batch {id:016x}"))?;
    Ok(batch)
}

/// The permits of `rules`, with the ids drawn for them, in that order.
fn draft_permits(
    policy: &Policy,
    policy_ref: &PolicyRef,
    subject: &Subject,
    rules: &[(u32, &CompiledRule)],
    ids: &[u64],
    now: u64,
    expires_at: u64,
) -> Vec<Permit> {
    let by_name: HashMap<&str, &Rule> = policy.rules.iter().map(|r| (r.name.as_str(), r)).collect();
    rules
        .iter()
        .zip(ids)
        .map(|((_, rule), id)| {
            let (action, object) = by_name
                .get(rule.name.as_str())
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
            Permit {
                id: *id,
                policy: policy_ref.clone(),
                subject: subject.clone(),
                action: action.to_owned(),
                object,
                effect: rule.effect,
                code: rule.code,
                rule: Some(rule.name.clone()),
                issued_at: now,
                expires_at,
                key_id: String::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridle_engine::compile;

    fn policy(rules: usize) -> (Policy, Compiled) {
        let mut text = String::from("name = \"batch-test\"\nversion = 2\n");
        for i in 0..rules {
            text.push_str(&format!(
                "[[rule]]\nname = \"r{i}\"\neffect = \"permit\"\nexec = [\"/opt/t{i}/**\"]\n"
            ));
        }
        let policy = Policy::parse(&text, "test.toml").expect("policy");
        let compiled = compile(&policy);
        (policy, compiled)
    }

    fn subject() -> Subject {
        Subject {
            cgroup_id: 7,
            cgroup_path: "/sys/fs/cgroup/test".into(),
        }
    }

    fn batch_files(state: &Path) -> Vec<std::path::PathBuf> {
        PermitStore::new(state)
            .files()
            .expect("files")
            .into_iter()
            .filter(|f| bridle_trust::store::is_batch_file(f))
            .collect()
    }

    #[test]
    fn an_issuance_is_one_stored_batch_and_a_renewal_replaces_it() {
        let state = tempfile::tempdir().expect("tempdir");
        let (policy, compiled) = policy(40);
        let mut issuer = Issuer::open(state.path(), Duration::from_secs(600)).expect("open");
        issuer
            .issue(&policy, &compiled, &subject(), 0..40)
            .expect("issue");
        let first = batch_files(state.path());
        assert_eq!(first.len(), 1, "one file for the whole issuance");

        let ring = KeyStore::new(state.path()).keyring().expect("ring");
        let store = PermitStore::new(state.path());
        let (kept, dropped) = store
            .load_verified(&ring, unix_now_ns(), |p| p.name == "batch-test")
            .expect("load");
        assert!(dropped.is_empty(), "{dropped:?}");
        assert_eq!(kept.len(), 40);
        // Every rule's kernel stamp names a stored, verified permit of that rule.
        for rule in 0..40u32 {
            let (id, _) = issuer.stamp(rule).expect("stamped");
            let p = kept.iter().find(|p| p.permit.id == id).expect("stored");
            assert_eq!(
                p.permit.rule.as_deref(),
                Some(compiled.rules[rule as usize].name.as_str())
            );
            assert_eq!(p.permit.action, "exec");
        }
        assert!(issuer.stamp(40).is_none());

        let before: Vec<(u64, u64)> = (0..40).filter_map(|r| issuer.stamp(r)).collect();
        std::thread::sleep(Duration::from_millis(2));
        issuer.renew().expect("renew");
        let second = batch_files(state.path());
        assert_eq!(second.len(), 1, "the renewal replaced the batch");
        assert_ne!(first, second);
        let (kept, dropped) = store
            .load_verified(&ring, unix_now_ns(), |_| true)
            .expect("load");
        assert!(dropped.is_empty(), "{dropped:?}");
        for (rule, (id, expiry)) in before.into_iter().enumerate() {
            let (new_id, new_expiry) = issuer.stamp(rule as u32).expect("stamped");
            assert_eq!(new_id, id, "a renewal keeps the permit ids");
            assert!(new_expiry > expiry);
            assert!(kept.iter().any(|p| p.permit.id == id));
        }
    }

    #[test]
    fn no_rule_no_batch_and_open_prunes_what_expired() {
        let state = tempfile::tempdir().expect("tempdir");
        let (policy, compiled) = policy(3);
        let mut issuer = Issuer::open(state.path(), Duration::from_secs(600)).expect("open");
        issuer
            .issue(&policy, &compiled, &subject(), std::iter::empty())
            .expect("issue");
        issuer.renew().expect("renew");
        assert!(batch_files(state.path()).is_empty());

        let mut short = Issuer::open(state.path(), Duration::from_millis(1)).expect("open");
        short
            .issue(&policy, &compiled, &subject(), 0..3)
            .expect("issue");
        assert_eq!(batch_files(state.path()).len(), 1);
        std::thread::sleep(Duration::from_millis(5));
        let _reopened = Issuer::open(state.path(), Duration::from_secs(600)).expect("open");
        assert!(
            batch_files(state.path()).is_empty(),
            "the expired batch was pruned"
        );
    }
}
