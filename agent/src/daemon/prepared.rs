//! Policies made ready to install: read, parsed, indexed by the engine and compiled, and the
//! ones last made ready, so a reload does that work only for the files that changed.
//!
//! Parsing, indexing and compiling depend on nothing but the file's bytes, the mode a
//! `[[confine]]` entry forces and the host invariants. A reload re-reads every file and
//! compares its SHA-256 with the one it was prepared from: an unchanged policy of 10,000 rules
//! is then not parsed again (about 100 ms). Everything after this step (resolving exec files,
//! signing permits, writing a new slot) is redone on every reload.

use anyhow::Result;
use bridle_engine::{Compiled, Engine, Mode, Policy, Rule};
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

/// A policy, compiled, ready to be installed for one workload.
pub(super) struct Prepared {
    /// Judges the workload's operations; its rate-limit and quarantine state starts empty.
    pub engine: Engine,
    /// Judges the workload's execs on the fanotify tier (stateless verdicts).
    pub ask_engine: Arc<Engine>,
    /// The kernel's view of the policy.
    pub compiled: Arc<Compiled>,
}

impl Prepared {
    /// The policy, with the forced mode applied.
    pub fn policy(&self) -> &Policy {
        self.engine.policy()
    }
}

/// The policies last prepared, by file and forced mode.
#[derive(Default)]
pub(super) struct PreparedPolicies {
    by_file: HashMap<(PathBuf, Option<Mode>), Ready>,
}

/// One policy as last prepared, and what it was prepared from.
struct Ready {
    /// SHA-256 of the file's bytes.
    source: [u8; 32],
    /// The invariants it was prepared with.
    invariants: Vec<Rule>,
    /// Never judges: each preparation takes an engine sharing its rules.
    engine: Engine,
    compiled: Arc<Compiled>,
}

impl PreparedPolicies {
    /// `file` as a policy with `mode` forced (if given) and `invariants`, ready to install.
    /// Parsed afresh unless the file's bytes and the invariants are those of its last
    /// preparation. A policy with an error is named with its `file:line:column`.
    pub fn prepare(
        &mut self,
        file: &Path,
        mode: Option<Mode>,
        invariants: &[Rule],
    ) -> Result<Prepared> {
        let text = Policy::read(file).map_err(|e| anyhow::anyhow!("{e}"))?;
        let source: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let key = (file.to_path_buf(), mode);
        if let Some(ready) = self.by_file.get(&key) {
            if ready.source == source && ready.invariants == invariants {
                return Ok(Prepared {
                    engine: ready.engine.sharing_rules(),
                    ask_engine: Arc::new(ready.engine.sharing_rules()),
                    compiled: Arc::clone(&ready.compiled),
                });
            }
        }
        let mut policy = Policy::parse(&text, &file.display().to_string())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        drop(text);
        if let Some(mode) = mode {
            policy.mode = mode;
        }
        let (engine, compiled) = Engine::with_compiled(policy, invariants.to_vec());
        let compiled = Arc::new(compiled);
        self.by_file.insert(
            key,
            Ready {
                source,
                invariants: invariants.to_vec(),
                engine: engine.sharing_rules(),
                compiled: Arc::clone(&compiled),
            },
        );
        Ok(Prepared {
            ask_engine: Arc::new(engine.sharing_rules()),
            engine,
            compiled,
        })
    }

    /// Forgets every policy for which `in_use` is false.
    pub fn retain(&mut self, in_use: impl Fn(&Path, Option<Mode>) -> bool) {
        self.by_file.retain(|(file, mode), _| in_use(file, *mode));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridle_engine::Invariants;

    const POLICY: &str =
        "name = \"p\"\n[[rule]]\nname = \"tools\"\neffect = \"permit\"\nexec = [\"/usr/bin/*\"]\n";

    fn write(dir: &Path, text: &str) -> PathBuf {
        let file = dir.join("p.toml");
        std::fs::write(&file, text).expect("write policy");
        file
    }

    #[test]
    fn an_unchanged_file_is_not_parsed_again_and_a_changed_one_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(dir.path(), POLICY);
        let mut policies = PreparedPolicies::default();
        let first = policies.prepare(&file, None, &[]).expect("prepare");
        let again = policies.prepare(&file, None, &[]).expect("prepare");
        assert!(Arc::ptr_eq(&first.compiled, &again.compiled), "reused");
        assert_eq!(again.policy().rules.len(), 1);

        let file = write(dir.path(), &POLICY.replace("/usr/bin/*", "/opt/bin/*"));
        let changed = policies.prepare(&file, None, &[]).expect("prepare");
        assert!(!Arc::ptr_eq(&first.compiled, &changed.compiled));
        assert_eq!(
            changed.compiled.policy.digest,
            Policy::load(&file).expect("load").digest_hex(),
            "prepared from the new text"
        );
    }

    #[test]
    fn the_forced_mode_and_the_invariants_are_part_of_what_is_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(dir.path(), POLICY);
        let mut policies = PreparedPolicies::default();
        let enforced = policies.prepare(&file, None, &[]).expect("prepare");
        let observed = policies
            .prepare(&file, Some(Mode::Observe), &[])
            .expect("prepare");
        assert_eq!(enforced.policy().mode, Mode::Enforce);
        assert_eq!(observed.policy().mode, Mode::Observe);
        assert!(observed.compiled.observe);

        let invariants = Invariants::parse(
            "[[rule]]\nname = \"no-sh\"\nexec = [\"/usr/bin/sh\"]\n",
            "inv.toml",
        )
        .expect("invariants")
        .rules;
        let guarded = policies.prepare(&file, None, &invariants).expect("prepare");
        assert!(!Arc::ptr_eq(&enforced.compiled, &guarded.compiled));
        assert_eq!(guarded.engine.invariants().len(), 1);
        assert!(guarded.compiled.rules.iter().any(|r| r.name == "no-sh"));
    }

    #[test]
    fn a_policy_with_an_error_is_named_and_not_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(
            dir.path(),
            "name = \"p\"\n[[rule]]\nname = \"x\"\neffect = \"permit\"\nexec = [\"relative\"]\n",
        );
        let mut policies = PreparedPolicies::default();
        let err = policies.prepare(&file, None, &[]).err().expect("an error");
        assert!(
            format!("{err:#}").contains(&format!("{}:5:", file.display())),
            "{err:#}"
        );
        assert!(policies.by_file.is_empty());
        let missing = policies.prepare(&dir.path().join("nope.toml"), None, &[]);
        assert!(format!("{:#}", missing.err().expect("an error")).contains("nope.toml"));
    }
}
