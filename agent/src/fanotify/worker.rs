//! The judge: the slow half of the exec ask, on its own thread, so that reading a file's
//! header or a slow engine verdict never holds up the reader.

use super::{
    known::{fd_path, identify, FileKey, Identity, Known},
    lock, AskDecision, AskStats, DecisionSender, WorkloadAsk,
};
use crate::{fanotify::bpfmap::BpfMap, fanotify::bpfmap::BPF_NOEXIST, kernel::entries::kernel_dev};
use anyhow::{Context, Result};
use bridle_common::{Decision, ExecKey, EFFECT_PERMIT, EFFECT_REFUSE};
use bridle_engine::{Code, Effect, Object};
use std::{
    collections::HashSet,
    os::{
        fd::{AsRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    sync::{atomic::Ordering, mpsc, Arc, Mutex},
    time::Duration,
};

/// Longest a refusal waits for its audit record to reach the disk before it is answered.
const RECORD_WAIT: Duration = Duration::from_millis(250);

/// Judges the workload events the reader could not answer itself.
pub(super) struct Worker {
    pub(super) decisions: DecisionSender,
    /// The dynamic loaders of this system, by identity.
    pub(super) loaders: HashSet<Identity>,
    pub(super) exec_rules: BpfMap,
    /// What the reader may answer itself, shared with it.
    pub(super) known: Arc<Mutex<Known>>,
    /// With `Some(group)`, a permitted file gets an ignore mark in the group, so its next
    /// execs are not asked at all (only when the group serves one workload).
    pub(super) ignore_in: Option<Arc<OwnedFd>>,
}

impl Worker {
    /// Judges one workload exec open for `ask`'s workload; returns whether to allow it.
    pub(super) fn decide(
        &mut self,
        ask: &WorkloadAsk,
        fd: RawFd,
        pid: i32,
        stats: &AskStats,
    ) -> bool {
        stats.judged.fetch_add(1, Ordering::Relaxed);
        match self.judge(ask, fd, pid) {
            Ok(allow) => {
                if !allow {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                }
                allow
            }
            Err(err) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let allow = ask.observe;
                eprintln!(
                    "bridle: warning: exec (pid {pid}) {} by the fail mode: {err:#}",
                    if allow { "allowed" } else { "refused" }
                );
                allow
            }
        }
    }

    fn judge(&mut self, ask: &WorkloadAsk, fd: RawFd, pid: i32) -> Result<bool> {
        if ask.quarantined {
            let shown = fd_path(fd).map_or_else(|_| "?".to_owned(), |p| p.display().to_string());
            return Ok(self.refuse(ask, pid, &shown, Code::Quarantined, None));
        }
        let ((dev, ino), ctime, nlink) = identify(fd).context("statx on the exec'd file")?;
        // The dynamic loader of a binary this process is executing: part of that exec, which
        // was judged already. A direct exec of the loader has no such predecessor.
        if lock(&self.known).take_interp(pid, (dev, ino)) {
            self.ignore(fd);
            return Ok(true);
        }
        let key = ExecKey {
            slot: ask.slot,
            dev,
            ino,
        };
        if ask.allow_anonymous && self.loaders.contains(&(dev, ino)) {
            // With anonymous executables allowed, a loader open without a judged predecessor
            // may be the interpreter of a memfd exec, which no filesystem mark can ask about
            // on this kernel. Allow it without an entry: a direct exec of the loader is then
            // still refused by the kill-on-exec backstop, which finds no permit for it.
            if self.exec_rules.lookup::<_, Decision>(&key)?.is_none() {
                return Ok(true);
            }
        }
        let link = fd_path(fd).context("resolving the exec'd file's path")?;
        let shown = link.display().to_string();
        let entry: Option<Decision> = self.exec_rules.lookup(&key).context("reading EXEC_RULES")?;
        // Refusals match by identity: a hard link or bind mount of a refused file is refused.
        if let Some(d) = entry.filter(|d| d.effect == EFFECT_REFUSE) {
            let code = Code::ALL
                .get(d.code as usize)
                .copied()
                .unwrap_or(Code::NoMatchingRule);
            let rule = ask.rules.get(d.rule as usize).cloned();
            return Ok(self.refuse(ask, pid, &shown, code, rule.as_deref()));
        }
        let anonymous = nlink == 0;
        let object = if anonymous {
            Object::AnonymousExec(shown.trim_start_matches('/').to_owned())
        } else {
            Object::Exec(link.clone())
        };
        let verdict = ask.engine.judge(&object);
        if verdict.effect != Effect::Permit {
            return Ok(self.refuse(ask, pid, &shown, verdict.code, verdict.rule.as_deref()));
        }
        let loader = loader_of(fd);
        if verdict.observed.is_some() {
            // Observe mode: allowed; the backstop reports what it would have refused. Its
            // loader belongs to this exec, not to a would-be refusal of its own.
            lock(&self.known).expect_interp(pid, loader);
            return Ok(true);
        }
        if entry.is_none() {
            let rule = verdict
                .rule
                .as_deref()
                .and_then(|r| ask.rules.iter().position(|n| n == r))
                .map_or(u32::MAX, |i| i as u32);
            let permit = Decision {
                effect: EFFECT_PERMIT,
                code: verdict.code.index(),
                rule,
                ..Decision::default()
            };
            match self.exec_rules.update(&key, &permit, BPF_NOEXIST) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {}
                Err(err) => {
                    return Err(err).context("writing the permit entry the backstop checks")
                }
            }
        }
        let mut known = lock(&self.known);
        known.expect_interp(pid, loader);
        if !anonymous {
            known.permit(
                FileKey {
                    slot: ask.slot,
                    file: (dev, ino),
                    ctime,
                    path: link,
                },
                loader,
            );
            drop(known);
            self.ignore(fd);
        }
        Ok(true)
    }

    /// Puts an ignore mark on the file behind `fd`, when this group may (see `ignore_in`). The
    /// kernel clears it when the file is written.
    fn ignore(&self, fd: RawFd) {
        if let Some(group) = &self.ignore_in {
            let _ = super::mark(
                group,
                libc::FAN_MARK_ADD | libc::FAN_MARK_IGNORED_MASK,
                fd,
                None,
            );
        }
    }

    /// Hands the refusal to the reporter (which prints and audits it); returns the answer.
    fn refuse(
        &self,
        ask: &WorkloadAsk,
        pid: i32,
        path: &str,
        code: Code,
        rule: Option<&str>,
    ) -> bool {
        // The process waits in execve for this answer: its /proc entry is still there.
        let (comm, uid) = crate::os::proc_identity(pid);
        let (recorded, on_disk) = mpsc::sync_channel(1);
        let decision = AskDecision {
            recorded: Some(recorded),
            workload: ask.workload,
            pid,
            comm,
            uid,
            path: path.to_owned(),
            code,
            rule: rule.map(str::to_owned),
            observed: ask.observe,
        };
        match self.decisions.send(decision) {
            Ok(()) => {
                // Audited first, answered second (see AskDecision::recorded). A reporter that
                // does not get to it in time only delays the answer.
                let _ = on_disk.recv_timeout(RECORD_WAIT);
            }
            Err(d) => {
                // The reporter is gone (shutting down): the decision still reaches the operator.
                eprintln!("bridle: refused exec {} ({})", d.path, d.code.as_str());
            }
        }
        ask.observe
    }
}

/// The identity of the loader an ELF file's exec opens (its `PT_INTERP`), if it has one.
fn loader_of(fd: RawFd) -> Option<Identity> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(elf_interpreter(fd)?).ok()?;
    Some((kernel_dev(meta.dev()), meta.ino()))
}

/// The loaders named by the shell's and bridle's own `PT_INTERP`: the system's.
pub(super) fn loader_paths() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for exe in [Path::new("/bin/sh"), Path::new("/proc/self/exe")] {
        let Ok(file) = std::fs::File::open(exe) else {
            continue;
        };
        if let Some(loader) = elf_interpreter(file.as_raw_fd()) {
            if !out.contains(&loader) {
                out.push(loader);
            }
        }
    }
    out
}

/// The identities of the system's loaders (see [`loader_paths`]).
pub(super) fn known_loaders() -> HashSet<Identity> {
    use std::os::unix::fs::MetadataExt;
    loader_paths()
        .into_iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| (kernel_dev(m.dev()), m.ino()))
        .collect()
}

/// The `PT_INTERP` path of a 64-bit ELF, read through the event's fd.
pub(super) fn elf_interpreter(fd: RawFd) -> Option<PathBuf> {
    let header = pread(fd, 0, 64)?;
    if header.get(..4)? != b"\x7fELF" || header[4] != 2 {
        return None;
    }
    let phoff = u64::from_le_bytes(header[0x20..0x28].try_into().ok()?);
    let phentsize = u16::from_le_bytes(header[0x36..0x38].try_into().ok()?) as usize;
    let phnum = u16::from_le_bytes(header[0x38..0x3a].try_into().ok()?) as usize;
    if phentsize < 56 || phnum > 128 {
        return None;
    }
    let table = pread(fd, phoff, phentsize * phnum)?;
    for ph in table.chunks_exact(phentsize) {
        if u32::from_le_bytes(ph[0..4].try_into().ok()?) == 3 {
            let off = u64::from_le_bytes(ph[8..16].try_into().ok()?);
            let size = u64::from_le_bytes(ph[32..40].try_into().ok()?) as usize;
            if size == 0 || size > 4096 {
                return None;
            }
            let raw = pread(fd, off, size)?;
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            return Some(PathBuf::from(std::ffi::OsStr::from_bytes(&raw[..end])));
        }
    }
    None
}

fn pread(fd: RawFd, offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    // SAFETY: reads at most `len` bytes into a buffer of that length.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), len, offset as libc::off_t) };
    (n == len as isize).then_some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interpreter_of_a_dynamic_binary_is_found() {
        let file = std::fs::File::open("/bin/sh").expect("open /bin/sh");
        let interp = elf_interpreter(file.as_raw_fd()).expect("a PT_INTERP");
        assert!(interp.to_string_lossy().contains("ld-linux"), "{interp:?}");
    }
}
