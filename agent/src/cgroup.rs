//! cgroup v2: finding the hierarchy, creating a workload's cgroup, emptying and removing it.

use anyhow::{anyhow, bail, Context, Result};
use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The mount point of the cgroup v2 hierarchy, read from `/proc/self/mountinfo`.
pub fn v2_root() -> Result<PathBuf> {
    let file = fs::File::open("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for line in BufReader::new(file).lines() {
        let line = line.context("reading /proc/self/mountinfo")?;
        if let Some(mount) = parse_cgroup2_mount(&line) {
            return Ok(mount);
        }
    }
    bail!("no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo); bridle needs cgroup v2")
}

/// The mount point in one mountinfo line, if that line mounts cgroup2.
fn parse_cgroup2_mount(line: &str) -> Option<PathBuf> {
    // Fields: id parent major:minor root mount-point options [optional…] - fstype source super
    let (left, right) = line.split_once(" - ")?;
    if right.split_whitespace().next()? != "cgroup2" {
        return None;
    }
    let mount = left.split_whitespace().nth(4)?;
    Some(PathBuf::from(unescape_mountinfo(mount)))
}

/// mountinfo escapes space, tab, newline and backslash as three octal digits.
pub fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cgroup directory this process created and will remove.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    id: u64,
    level: u32,
}

impl Cgroup {
    /// Creates `root/name` (it must not exist yet).
    pub fn create(root: &Path, name: &str) -> Result<Cgroup> {
        let path = root.join(name);
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        let meta =
            fs::metadata(&path).with_context(|| format!("reading cgroup {}", path.display()))?;
        let level = path
            .strip_prefix(root)
            .map(|rel| rel.components().count() as u32)
            .unwrap_or(1);
        Ok(Cgroup {
            path,
            id: meta.ino(),
            level,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id the kernel reports for it (its directory's inode number).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Depth below the v2 root (a child of the root is level 1).
    pub fn level(&self) -> u32 {
        self.level
    }

    /// Kills every process in the cgroup and its descendants, and waits until it is empty.
    pub fn kill_all(&self, timeout: Duration) -> Result<()> {
        if !self.populated()? {
            return Ok(());
        }
        let kill = self.path.join("cgroup.kill");
        fs::write(&kill, "1").with_context(|| format!("writing {}", kill.display()))?;
        let deadline = Instant::now() + timeout;
        while self.populated()? {
            if Instant::now() > deadline {
                bail!(
                    "processes in {} survived cgroup.kill for {:?}",
                    self.path.display(),
                    timeout
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Whether any process is left in the cgroup or below it.
    pub fn populated(&self) -> Result<bool> {
        let events = self.path.join("cgroup.events");
        let text =
            fs::read_to_string(&events).with_context(|| format!("reading {}", events.display()))?;
        Ok(text
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["populated", "1"]))
    }

    /// Kills what is left and removes the directory (children first).
    pub fn remove(self) -> Result<()> {
        self.kill_all(Duration::from_secs(5))?;
        remove_tree(&self.path)
    }
}

/// Removes an empty cgroup tree, deepest first.
fn remove_tree(path: &Path) -> Result<()> {
    let entries = fs::read_dir(path).with_context(|| format!("listing {}", path.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", path.display()))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    // rmdir can race with the kernel's final release of an exiting task: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => {
                return Err(anyhow!(err)).with_context(|| format!("removing {}", path.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_mountinfo() {
        let line = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw";
        assert_eq!(
            parse_cgroup2_mount(line),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v1 = "35 31 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu";
        assert_eq!(parse_cgroup2_mount(v1), None);
    }

    #[test]
    fn unescapes_octal_sequences() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/trailing\"), r"/trailing\");
    }
}
