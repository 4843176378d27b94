//! Confinements an operator asked for at run time (`bridle confine`, `bridle release`, and
//! `bridle run` when a daemon is running), kept on disk so that a restarted daemon confines
//! (and leaves released) exactly what the one before it did.

use anyhow::{Context, Result};
use bridle_engine::Mode;
use serde::{Deserialize, Serialize};
use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

/// One cgroup confined by request rather than by a `[[confine]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requested {
    /// The cgroup's path below the cgroup v2 root.
    pub cgroup: String,
    /// The policy file (absolute).
    pub policy: PathBuf,
    /// A mode that overrides the policy's.
    #[serde(default, with = "mode_name")]
    pub mode: Option<Mode>,
}

/// The confinements asked for at run time, and the configured ones an operator released.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    /// Cgroups confined on request.
    #[serde(default)]
    pub confined: Vec<Requested>,
    /// Cgroups a `[[confine]]` entry matches that an operator released: not confined again
    /// until someone confines them on request (or they disappear).
    #[serde(default)]
    pub released: Vec<String>,
}

impl Runtime {
    /// The file under the state directory.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("daemon").join("runtime.json")
    }

    /// Reads the file; a missing file is an empty record.
    pub fn load(state_dir: &Path) -> Result<Runtime> {
        let path = Runtime::path(state_dir);
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{}: not a runtime confinement record", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Runtime::default()),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the file whole (a new file renamed over the old one, so a crash leaves one or
    /// the other), readable by root only.
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        let path = Runtime::path(state_dir);
        let dir = path.parent().unwrap_or(state_dir);
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = path.with_extension("json.new");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(serde_json::to_string_pretty(self)?.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))
    }

    /// The request that confines `cgroup`, if any.
    pub fn requested(&self, cgroup: &str) -> Option<&Requested> {
        self.confined.iter().find(|r| r.cgroup == cgroup)
    }

    /// Whether an operator released `cgroup` from its `[[confine]]` entry.
    pub fn is_released(&self, cgroup: &str) -> bool {
        self.released.iter().any(|r| r == cgroup)
    }

    /// Records a request to confine (replacing an earlier one for the same cgroup).
    pub fn confine(&mut self, request: Requested) {
        self.released.retain(|r| *r != request.cgroup);
        self.confined.retain(|r| r.cgroup != request.cgroup);
        self.confined.push(request);
    }

    /// Records a release: a requested confinement is forgotten; a configured one is marked
    /// released when `configured`.
    pub fn release(&mut self, cgroup: &str, configured: bool) {
        self.confined.retain(|r| r.cgroup != cgroup);
        if configured && !self.is_released(cgroup) {
            self.released.push(cgroup.to_owned());
        }
    }

    /// Forgets every cgroup for which `exists` is false; returns whether anything changed.
    pub fn forget_missing(&mut self, exists: impl Fn(&str) -> bool) -> bool {
        let before = (self.confined.len(), self.released.len());
        self.confined.retain(|r| exists(&r.cgroup));
        self.released.retain(|r| exists(r));
        before != (self.confined.len(), self.released.len())
    }
}

/// `Option<Mode>` as `"enforce"`, `"observe"` or null.
mod mode_name {
    use bridle_engine::Mode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &Option<Mode>, s: S) -> Result<S::Ok, S::Error> {
        match mode {
            Some(m) => s.serialize_some(m.as_str()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Mode>, D::Error> {
        match Option::<String>::deserialize(d)?.as_deref() {
            None => Ok(None),
            Some("enforce") => Ok(Some(Mode::Enforce)),
            Some("observe") => Ok(Some(Mode::Observe)),
            Some(other) => Err(serde::de::Error::custom(format!(
                "mode must be \"enforce\" or \"observe\", not {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cgroup: &str) -> Requested {
        Requested {
            cgroup: cgroup.to_owned(),
            policy: PathBuf::from("/etc/bridle/policies/p.toml"),
            mode: Some(Mode::Observe),
        }
    }

    #[test]
    fn the_record_survives_a_restart_and_stays_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            Runtime::load(dir.path()).expect("empty"),
            Runtime::default()
        );
        let mut runtime = Runtime::default();
        runtime.confine(request("agents/a"));
        runtime.release("agents/b", true);
        runtime.save(dir.path()).expect("save");
        assert_eq!(Runtime::load(dir.path()).expect("load"), runtime);
        let mode = fs::metadata(Runtime::path(dir.path()))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn confining_undoes_a_release_and_releasing_forgets_a_request() {
        let mut runtime = Runtime::default();
        runtime.release("a", true);
        assert!(runtime.is_released("a"));
        runtime.confine(request("a"));
        assert!(!runtime.is_released("a"));
        assert!(runtime.requested("a").is_some());
        runtime.release("a", false);
        assert!(runtime.requested("a").is_none());
        assert!(
            !runtime.is_released("a"),
            "not configured: nothing to keep released"
        );
    }

    #[test]
    fn missing_cgroups_are_forgotten() {
        let mut runtime = Runtime::default();
        runtime.confine(request("gone"));
        runtime.confine(request("here"));
        runtime.release("gone-too", true);
        assert!(runtime.forget_missing(|c| c == "here"));
        assert_eq!(runtime.confined, vec![request("here")]);
        assert!(runtime.released.is_empty());
        assert!(!runtime.forget_missing(|c| c == "here"));
    }
}
