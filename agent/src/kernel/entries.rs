//! Turning a compiled policy into the kernel's map entries.
//!
//! The kernel judges an exec by file identity (device, inode) and by place (directory and
//! name), so every exec pattern is resolved here against the filesystem: each file a pattern
//! names is resolved (symlinks followed), judged by the engine itself, and entered under its
//! identity and its place. The kernel entry and the engine's verdict therefore agree by
//! construction; a hard link or bind mount of a refused file is refused by identity, and a
//! file replaced at a named path (a package upgrade: new inode, same path) meets its path's
//! rule by place. Address rules arrive already flattened by the engine.
//!
//! Unix-socket rules arrive as one entry per address; the kernel matches the address string
//! exactly, so each pathname is also entered under the spellings the host's symlinks give it
//! when the entries are built (see [`unix_spellings`]).

use anyhow::{bail, Context, Result};
use bridle_common::{
    Decision, ExecKey, ExecPlace, ExecPlaceKey, PortRule, PortRules, UnixKey, EFFECT_PERMIT,
    EFFECT_REFUSE, PORT_RULES,
};
use bridle_engine::{
    Code, Compiled, Effect, Engine, ExecPattern, NetEntry, Object, PortEntry, RuleId,
};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    net::Ipv6Addr,
    os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

/// How many directory entries one policy's exec patterns may make bridle visit.
const WALK_LIMIT: usize = 500_000;

/// One address entry: prefix length (of the 128-bit address), address, port rules.
pub type NetEntryRow = (u8, [u8; 16], PortRules);

/// Everything one workload needs in the kernel.
#[derive(Debug, Default, Clone)]
pub struct KernelEntries {
    /// Exec decisions by file identity.
    pub exec: Vec<(ExecKey, Decision)>,
    /// Exec decisions by place (directory and name): the path rules, for whatever file is
    /// there when the exec happens.
    pub places: Vec<(ExecPlaceKey, Decision)>,
    /// Address entries, IPv4 ones in their IPv4-mapped form, as the kernel's one address
    /// trie keys them (see `bridle_common::NetKey`).
    pub net: Vec<NetEntryRow>,
    /// Unix-socket decisions by exact address (the slot is in the key).
    pub unix: Vec<(UnixKey, Decision)>,
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
        let net = self.net.iter().flat_map(|(_, _, p)| used(p));
        let unix = self.unix.iter().map(|(_, d)| d.rule);
        exec.chain(places)
            .chain(net)
            .chain(unix)
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
        self.unix.iter_mut().for_each(|(_, d)| apply(d));
        for (_, _, ports) in &mut self.net {
            let len = ports.len as usize;
            ports.rules[..len]
                .iter_mut()
                .for_each(|r| apply(&mut r.decision));
        }
    }

    /// Whether these entries decide everything as `other` does: the same keys and the same
    /// decisions, whatever permits stamp them.
    pub fn decide_as(&self, other: &KernelEntries) -> bool {
        // The lists come from sets and directory walks: their order means nothing.
        same_keyed(&self.exec, &other.exec)
            && same_keyed(&self.places, &other.places)
            && same_keyed(&self.unix, &other.unix)
            && same_nets(&self.net, &other.net)
            && self.exec_paths == other.exec_paths
            && self.not_enforced == other.not_enforced
    }
}

/// The same decision, whatever permit stamps it.
fn same_decision(a: &Decision, b: &Decision) -> bool {
    let unstamped = |d: &Decision| Decision {
        permit_id: 0,
        expires_ns: 0,
        ..*d
    };
    unstamped(a) == unstamped(b)
}

/// The same keys with the same decisions, in any order.
fn same_keyed<K: std::hash::Hash + Eq>(a: &[(K, Decision)], b: &[(K, Decision)]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let by_key: HashMap<&K, &Decision> = a.iter().map(|(k, d)| (k, d)).collect();
    by_key.len() == a.len()
        && b.iter()
            .all(|(k, d)| by_key.get(k).is_some_and(|x| same_decision(x, d)))
}

/// `list` in (prefix length, address) order.
fn sorted_nets(list: &[NetEntryRow]) -> Vec<&NetEntryRow> {
    let mut refs: Vec<&NetEntryRow> = list.iter().collect();
    refs.sort_by(|x, y| (x.0, &x.1).cmp(&(y.0, &y.1)));
    refs
}

/// The same prefixes with the same port rules, in any order.
fn same_nets(a: &[NetEntryRow], b: &[NetEntryRow]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    sorted_nets(a).iter().zip(sorted_nets(b)).all(|(x, y)| {
        let (p, q) = (&x.2, &y.2);
        x.0 == y.0
            && x.1 == y.1
            && p.len == q.len
            && p.rules
                .iter()
                .zip(&q.rules)
                .take(p.len as usize)
                .all(|(r, s)| {
                    r.lo == s.lo && r.hi == s.hi && same_decision(&r.decision, &s.decision)
                })
    })
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
    out.net = net_entries(compiled, &compiled.net)?;
    // Host rules have no entries here: the workload's resolver installs the addresses of
    // the names it answers (see crate::dns).
    out.unix = unix_entries(compiled, slot, &directory_links());
    Ok(out)
}

/// The unix-socket entries of `compiled` under `slot`, each pathname also under the other
/// spellings `links` give it. Where two spellings meet (a rule names both), the rule of lower
/// id, that is the refusal, decides, as the engine decides between rules.
fn unix_entries(
    compiled: &Compiled,
    slot: u64,
    links: &[(PathBuf, PathBuf)],
) -> Vec<(UnixKey, Decision)> {
    let mut by_address: BTreeMap<String, (RuleId, Effect)> = BTreeMap::new();
    let mut add = |address: String, rule: RuleId, effect: Effect| {
        by_address
            .entry(address)
            .and_modify(|e| {
                if rule < e.0 {
                    *e = (rule, effect);
                }
            })
            .or_insert((rule, effect));
    };
    for entry in &compiled.unix {
        add(entry.path.clone(), entry.rule, entry.effect);
        if entry.path.starts_with('/') {
            for spelling in unix_spellings(Path::new(&entry.path), links) {
                add(spelling, entry.rule, entry.effect);
            }
        }
    }
    by_address
        .into_iter()
        // An address longer than sun_path cannot be connected to by that spelling at all.
        .filter_map(|(address, (rule, effect))| {
            let key = UnixKey::from_address(slot, address.as_bytes())?;
            let RuleId(index) = rule;
            let code = compiled
                .rules
                .get(index as usize)
                .map(|r| r.code)
                .unwrap_or(Code::NoMatchingRule);
            Some((
                key,
                Decision {
                    effect: effect_byte(effect),
                    code: code.index(),
                    rule: index,
                    ..Decision::default()
                },
            ))
        })
        .collect()
}

/// Other spellings of socket path `path` on this host: the path with its symlinks resolved,
/// and the path reached through each directory symlink of `links` (`/var/run` for `/run`).
/// The kernel hook sees only the string a process passes, so without these a rule on
/// `/var/run/docker.sock` would not cover a connect to `/run/docker.sock`, or the reverse.
/// Symlinks made after the entries are built (by the workload, say) are not covered.
pub fn unix_spellings(path: &Path, links: &[(PathBuf, PathBuf)]) -> Vec<String> {
    let mut out = BTreeSet::new();
    // The socket itself may not exist yet: then its directory still resolves.
    let resolved = fs::canonicalize(path).ok().or_else(|| {
        let dir = fs::canonicalize(path.parent()?).ok()?;
        Some(dir.join(path.file_name()?))
    });
    let mut targets = vec![path.to_path_buf()];
    if let Some(resolved) = resolved {
        targets.push(resolved);
    }
    for target in &targets {
        out.insert(target.clone());
        for (link, dir) in links {
            if let Ok(rest) = target.strip_prefix(dir) {
                out.insert(link.join(rest));
            }
        }
    }
    out.remove(path);
    out.into_iter()
        .filter_map(|p| p.to_str().map(str::to_owned))
        .collect()
}

/// Directory symlinks in the first two levels of the filesystem (`/var/run` -> `/run`,
/// `/bin` -> `/usr/bin`), with their resolved targets: the usual second spellings of a socket
/// path. Virtual filesystems are skipped.
pub fn directory_links() -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::from("/")];
    for depth in 0..2 {
        let mut next = Vec::new();
        for dir in &dirs {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if ["/proc", "/sys", "/dev"]
                    .iter()
                    .any(|v| path == Path::new(v))
                {
                    continue;
                }
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_symlink() {
                    if let Ok(target) = fs::canonicalize(&path) {
                        if target.is_dir() && target != path {
                            out.push((path, target));
                        }
                    }
                } else if kind.is_dir() && depth == 0 {
                    next.push(path);
                }
            }
        }
        dirs = next;
    }
    out
}

/// One family's address entries, each with its port rules.
fn net_entries(compiled: &Compiled, entries: &[NetEntry<Ipv6Addr>]) -> Result<Vec<NetEntryRow>> {
    entries
        .iter()
        .map(|e| {
            let what = || prefix_text(e.prefix_len, e.addr.octets());
            let rules = port_rules(compiled, &e.ports, what)?;
            Ok((e.prefix_len, e.addr.octets(), rules))
        })
        .collect()
}

/// An address entry's prefix as the policy wrote it: `a.b.c.d/n` for an IPv4 one (held
/// mapped), `x::y/n` for an IPv6 one.
pub fn prefix_text(prefix_len: u8, addr: [u8; 16]) -> String {
    let addr = Ipv6Addr::from(addr);
    match addr.to_ipv4_mapped() {
        Some(v4) if prefix_len >= 96 => format!("{v4}/{}", prefix_len - 96),
        _ => format!("{addr}/{prefix_len}"),
    }
}

/// The port rules of one address entry; `what` names the entry in an error.
fn port_rules(
    compiled: &Compiled,
    ports: &[PortEntry],
    what: impl Fn() -> String,
) -> Result<PortRules> {
    if ports.len() > PORT_RULES {
        bail!(
            "{} carries {} port ranges; the kernel holds at most {PORT_RULES} per address prefix",
            what(),
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
    use bridle_engine::{compile, Policy};

    #[test]
    fn a_socket_path_is_entered_under_its_symlinked_spellings() {
        let dir = tempfile_dir();
        let real = dir.join("run");
        fs::create_dir_all(&real).expect("run");
        let link = dir.join("var-run");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let links = vec![(link.clone(), real.clone())];
        let through_link = link.join("docker.sock");
        let spellings = unix_spellings(&through_link, &links);
        assert!(spellings.contains(&real.join("docker.sock").display().to_string()));
        let spellings = unix_spellings(&real.join("docker.sock"), &links);
        assert_eq!(spellings, vec![through_link.display().to_string()]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn where_two_spellings_meet_the_refusal_decides() {
        let dir = tempfile_dir();
        let real = dir.join("run");
        fs::create_dir_all(&real).expect("run");
        let link = dir.join("var-run");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let text = format!(
            "name = \"t\"\ndefault = \"permit\"\n[[rule]]\nname = \"allow\"\neffect = \"permit\"\nconnect = [\"unix:{r}/d.sock\"]\n[[rule]]\nname = \"deny\"\neffect = \"refuse\"\nconnect = [\"unix:{l}/d.sock\"]\n",
            r = real.display(),
            l = link.display()
        );
        let compiled = compile(&Policy::parse(&text, "t.toml").expect("parses"));
        let entries = unix_entries(&compiled, 5, &[(link.clone(), real.clone())]);
        assert_eq!(entries.len(), 2, "{entries:?}");
        for (key, decision) in &entries {
            assert_eq!(key.slot, 5);
            assert_eq!(decision.effect, EFFECT_REFUSE, "{key:?}");
            assert_eq!(compiled.rules[decision.rule as usize].name, "deny");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "bridle-entries-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn mapped(v4: [u8; 4]) -> [u8; 16] {
        std::net::Ipv4Addr::from(v4).to_ipv6_mapped().octets()
    }

    #[test]
    fn entries_decide_alike_whatever_their_order_and_permits() {
        let decision = |rule: u32, effect: u8| Decision {
            rule,
            effect,
            ..Decision::default()
        };
        let key = |ino: u64| ExecKey {
            ino,
            ..ExecKey::default()
        };
        let mut ports = PortRules {
            len: 1,
            ..PortRules::default()
        };
        ports.rules[0].hi = 443;
        ports.rules[0].decision = decision(1, EFFECT_PERMIT);
        let a = KernelEntries {
            exec: vec![
                (key(1), decision(0, EFFECT_PERMIT)),
                (key(2), decision(2, 0)),
            ],
            net: vec![
                (128, mapped([10, 0, 0, 1]), ports),
                (120, mapped([10, 0, 1, 0]), ports),
            ],
            ..KernelEntries::default()
        };
        let mut b = KernelEntries {
            exec: vec![
                (key(2), decision(2, 0)),
                (key(1), decision(0, EFFECT_PERMIT)),
            ],
            net: vec![
                (120, mapped([10, 0, 1, 0]), ports),
                (128, mapped([10, 0, 0, 1]), ports),
            ],
            ..KernelEntries::default()
        };
        b.stamp(|rule| Some((u64::from(rule) + 100, 12345)));
        assert!(a.decide_as(&b), "reordered and stamped");

        let mut refused = b.clone();
        refused.exec[1].1.effect = 0;
        assert!(!a.decide_as(&refused), "a decision changed");
        let mut moved = b.clone();
        moved.net[0].0 = 121;
        assert!(!a.decide_as(&moved), "a prefix changed");
        let mut fewer = b;
        fewer.exec.pop();
        assert!(!a.decide_as(&fewer), "an entry went");
    }

    #[test]
    fn kernel_dev_matches_mkdev() {
        // 259:3 (nvme) and 8:17 with a minor above 255.
        let st = libc::makedev(259, 3);
        assert_eq!(kernel_dev(st), (259 << 20) | 3);
        let st = libc::makedev(8, 300);
        assert_eq!(kernel_dev(st), (8 << 20) | 300);
    }
}
