//! Turning a compiled policy into the kernel's map entries.
//!
//! The kernel judges an exec by file identity (device, inode) and by place (directory and
//! name), so every exec pattern is resolved here against the filesystem: each file a pattern
//! names is resolved (symlinks followed), judged by the engine itself, and entered under its
//! identity and its place. The kernel entry and the engine's verdict therefore agree by
//! construction; a hard link or bind mount of a refused file is refused by identity, and a
//! file replaced at a named path (a package upgrade: new inode, same path) meets its path's
//! rule by place. Address rules arrive already flattened by the engine.

use anyhow::{bail, Context, Result};
use bridle_common::{
    Decision, ExecKey, ExecPlace, ExecPlaceKey, PortRule, PortRules, EFFECT_PERMIT, EFFECT_REFUSE,
    PORT_RULES,
};
use bridle_engine::{
    Code, Compiled, Effect, Engine, ExecPattern, NetEntry, Object, PortEntry, RuleId,
};
use std::{
    collections::{BTreeSet, HashMap},
    fs,
    os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

/// How many directory entries one policy's exec patterns may make bridle visit.
const WALK_LIMIT: usize = 500_000;

/// Everything one workload needs in the kernel.
#[derive(Debug, Default)]
pub struct KernelEntries {
    /// Exec decisions by file identity.
    pub exec: Vec<(ExecKey, Decision)>,
    /// Exec decisions by place (directory and name): the path rules, for whatever file is
    /// there when the exec happens.
    pub places: Vec<(ExecPlaceKey, Decision)>,
    /// IPv4 entries: (prefix length, address, port rules).
    pub net4: Vec<(u8, [u8; 4], PortRules)>,
    /// IPv6 entries: (prefix length, address, port rules).
    pub net6: Vec<(u8, [u8; 16], PortRules)>,
    /// Resolved exec files by identity, to name them in events.
    pub exec_paths: HashMap<(u64, u64), PathBuf>,
    /// What the policy says that this kernel tier does not enforce, in the operator's words.
    pub not_enforced: Vec<String>,
}

impl KernelEntries {
    /// The rule indices the entries were compiled from.
    pub fn rules(&self) -> std::collections::BTreeSet<u32> {
        let exec = self.exec.iter().map(|(_, d)| d.rule);
        let places = self.places.iter().map(|(_, d)| d.rule);
        let net4 = self.net4.iter().flat_map(|(_, _, p)| used(p));
        let net6 = self.net6.iter().flat_map(|(_, _, p)| used(p));
        exec.chain(places)
            .chain(net4)
            .chain(net6)
            .filter(|r| *r != u32::MAX)
            .collect()
    }

    /// Sets each entry's permit id and kernel expiry from its rule's permit.
    pub fn stamp(&mut self, permit_of: impl Fn(u32) -> Option<(u64, u64)>) {
        let apply = |d: &mut Decision| {
            if let Some((id, expires)) = permit_of(d.rule) {
                d.permit_id = id;
                d.expires_ns = expires;
            }
        };
        self.exec.iter_mut().for_each(|(_, d)| apply(d));
        self.places.iter_mut().for_each(|(_, d)| apply(d));
        let net4 = self.net4.iter_mut().map(|(_, _, p)| p);
        let net6 = self.net6.iter_mut().map(|(_, _, p)| p);
        for ports in net4.chain(net6) {
            let len = ports.len as usize;
            ports.rules[..len]
                .iter_mut()
                .for_each(|r| apply(&mut r.decision));
        }
    }
}

fn used(p: &PortRules) -> impl Iterator<Item = u32> + '_ {
    p.rules[..p.len as usize].iter().map(|r| r.decision.rule)
}

/// The kernel's encoding of a device number (`MKDEV`: major in the high 12 bits of 32).
pub fn kernel_dev(st_dev: u64) -> u64 {
    let major = libc::major(st_dev) as u64;
    let minor = libc::minor(st_dev) as u64;
    (major << 20) | minor
}

fn effect_byte(effect: Effect) -> u8 {
    match effect {
        Effect::Permit => EFFECT_PERMIT,
        // Invalidate never reaches a per-object entry; treat it as the refusal it implies.
        Effect::Refuse | Effect::Invalidate => EFFECT_REFUSE,
    }
}

fn rule_index(compiled: &Compiled, name: Option<&str>) -> u32 {
    name.and_then(|n| compiled.rules.iter().position(|r| r.name == n))
        .map(|i| i as u32)
        .unwrap_or(u32::MAX)
}

/// Builds the entries of `compiled` (the policy `engine` judges) under policy slot `slot`.
pub fn build(engine: &Engine, compiled: &Compiled, slot: u64) -> Result<KernelEntries> {
    let mut out = KernelEntries::default();
    build_exec(engine, compiled, slot, &mut out)?;
    out.net4 = net_entries(compiled, &compiled.net4, |a| a.octets())?;
    out.net6 = net_entries(compiled, &compiled.net6, |a| a.octets())?;
    // Host rules have no entries here: the workload's resolver installs the addresses of
    // the names it answers (see crate::dns).
    // A refusing default covers unix connects too, and they are not hooked: say so then as
    // well, not only when the policy names a socket.
    if !compiled.unix.is_empty() || compiled.default == Effect::Refuse {
        out.not_enforced
            .push(super::net::UNIX_NOT_ENFORCED.to_owned());
    }
    Ok(out)
}

/// One family's address entries, each with its port rules.
fn net_entries<A: std::fmt::Display + Copy, const N: usize>(
    compiled: &Compiled,
    entries: &[NetEntry<A>],
    octets: impl Fn(A) -> [u8; N],
) -> Result<Vec<(u8, [u8; N], PortRules)>> {
    entries
        .iter()
        .map(|e| {
            let what = format!("{}/{}", e.addr, e.prefix_len);
            let rules = port_rules(compiled, &e.ports, &what)?;
            Ok((e.prefix_len, octets(e.addr), rules))
        })
        .collect()
}

fn port_rules(compiled: &Compiled, ports: &[PortEntry], what: &str) -> Result<PortRules> {
    if ports.len() > PORT_RULES {
        bail!(
            "{what} carries {} port ranges; the kernel holds at most {PORT_RULES} per address prefix",
            ports.len()
        );
    }
    let mut rules = PortRules {
        len: ports.len() as u32,
        ..PortRules::default()
    };
    for (slot, port) in rules.rules.iter_mut().zip(ports) {
        let RuleId(rule) = port.rule;
        let code = compiled
            .rules
            .get(rule as usize)
            .map(|r| r.code)
            .unwrap_or(Code::NoMatchingRule);
        *slot = PortRule {
            lo: port.lo,
            hi: port.hi,
            _pad: 0,
            decision: Decision {
                effect: effect_byte(port.effect),
                code: code.index(),
                rule,
                ..Decision::default()
            },
        };
    }
    Ok(rules)
}

fn build_exec(
    engine: &Engine,
    compiled: &Compiled,
    slot: u64,
    out: &mut KernelEntries,
) -> Result<()> {
    let mut candidates = BTreeSet::new();
    let mut budget = WALK_LIMIT;
    for entry in &compiled.exec {
        collect(&entry.pattern, &mut candidates, &mut budget)?;
    }
    let mut by_identity: HashMap<ExecKey, Decision> = HashMap::new();
    let mut by_place: HashMap<ExecPlaceKey, Decision> = HashMap::new();
    let decide = |path: &Path| {
        let verdict = engine.judge(&Object::Exec(path.to_path_buf()));
        Decision {
            effect: effect_byte(verdict.effect),
            code: verdict.code.index(),
            rule: rule_index(compiled, verdict.rule.as_deref()),
            ..Decision::default()
        }
    };
    // A path a literal pattern names that holds no file yet still has a place, so a
    // binary installed there later meets its rule at once.
    for entry in &compiled.exec {
        let named = entry.pattern.static_prefix();
        if named.as_os_str().len() == entry.pattern.as_str().len() && !named.exists() {
            if let Some(place) = place_of(named, slot) {
                by_place.insert(place.0, decide(&place.1));
            }
        }
    }
    for path in candidates {
        let Ok(resolved) = fs::canonicalize(&path) else {
            continue; // a dangling link executes nothing
        };
        let Ok(meta) = fs::metadata(&resolved) else {
            continue;
        };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        let decision = decide(&resolved);
        if let Some((place, _)) = place_of(&resolved, slot) {
            by_place.insert(place, decision);
        }
        let key = ExecKey {
            slot,
            dev: kernel_dev(meta.dev()),
            ino: meta.ino(),
        };
        out.exec_paths.insert((key.dev, key.ino), resolved);
        // Two paths to one file (hard link, bind mount): a refusal of either wins.
        by_identity
            .entry(key)
            .and_modify(|d| {
                if decision.effect == EFFECT_REFUSE {
                    *d = decision;
                }
            })
            .or_insert(decision);
    }
    out.exec = by_identity.into_iter().collect();
    out.places = by_place.into_iter().collect();
    Ok(())
}

/// The place key of `path` (its directory's identity and its name) and the path as the kernel
/// reaches it (directory symlinks resolved), if its directory exists.
fn place_of(path: &Path, slot: u64) -> Option<(ExecPlaceKey, PathBuf)> {
    let name = path.file_name()?;
    let dir = fs::canonicalize(path.parent()?).ok()?;
    let meta = fs::metadata(&dir).ok()?;
    if !meta.is_dir() {
        return None;
    }
    let place = ExecPlace::new(kernel_dev(meta.dev()), meta.ino(), name.as_bytes());
    Some((ExecPlaceKey { slot, place }, dir.join(name)))
}

/// Adds every existing path that `pattern` matches.
fn collect(pattern: &ExecPattern, into: &mut BTreeSet<PathBuf>, budget: &mut usize) -> Result<()> {
    let start = pattern.static_prefix();
    if pattern.matches(start) {
        into.insert(start.to_path_buf());
    }
    let depth = if pattern.is_recursive() {
        usize::MAX
    } else {
        Path::new(pattern.as_str()).components().count() - start.components().count()
    };
    walk(pattern, start, depth, into, budget)
}

fn walk(
    pattern: &ExecPattern,
    dir: &Path,
    depth: usize,
    into: &mut BTreeSet<PathBuf>,
    budget: &mut usize,
) -> Result<()> {
    if depth == 0 {
        return Ok(());
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(()); // a pattern may name a directory that does not exist on this host
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        *budget = budget.checked_sub(1).with_context(|| {
            format!(
                "exec patterns reach more than {WALK_LIMIT} files (at {}); narrow the patterns",
                dir.display()
            )
        })?;
        let path = entry.path();
        if pattern.matches(&path) {
            into.insert(path.clone());
        }
        // Never descend through symlinks: a link loop must not hang the compile.
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk(pattern, &path, depth - 1, into, budget)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_matches_mkdev() {
        // 259:3 (nvme) and 8:17 with a minor above 255.
        let st = libc::makedev(259, 3);
        assert_eq!(kernel_dev(st), (259 << 20) | 3);
        let st = libc::makedev(8, 300);
        assert_eq!(kernel_dev(st), (8 << 20) | 300);
    }
}
