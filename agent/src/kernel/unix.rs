//! The unix-socket hooks: the kernel's `connect_unix` and `sendmsg_unix` cgroup sock_addr
//! attach types (Linux 6.7 and later), which aya 0.14 can neither load nor attach.
//!
//! How they are loaded, and why this way:
//!
//! - The programs live in bridle's one eBPF object with the others (ebpf/src/unix.rs), in
//!   sections aya-obj 0.3 parses (`cgroup/connect4/connect_unix`: it reads only the first two
//!   parts), so aya's own load of the object is unaffected; aya is never asked to load them.
//! - This module parses the same object again with aya-obj, applies the CO-RE relocations
//!   against the running kernel's BTF, points every map reference at the maps aya created (or
//!   the daemon pinned), links the BPF-to-BPF calls, and rewrites the one kfunc call (see
//!   [`KFUNC_CAST_TO_KERN_CTX`]), all with aya-obj's public API; then it issues BPF_PROG_LOAD
//!   with the unix expected attach type and BPF_LINK_CREATE at each cgroup through the
//!   wrappers in [`super::bpf_sys`]. When aya learns these attach types, this module shrinks to
//!   a `CgroupSockAddr` load like the others.
//!
//! Whether the kernel has the hooks is found by loading them for real: a kernel before 6.7
//! has neither the attach types nor `bpf_sock_addr_kern.uaddrlen`, and the load fails. Then
//! the workload's unix connects are not judged, and bridle says so ([`not_enforced`]).

use super::bpf_sys::{self, ProgLoad, CGROUP_UNIX_CONNECT, CGROUP_UNIX_SENDMSG};
use anyhow::{anyhow, bail, Context, Result};
use aya_obj::{
    btf::{Btf, BtfKind},
    generated::bpf_insn,
    Object,
};
use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::Path,
};

/// The unix-socket programs: name in the object, and the attach type they are loaded for.
pub const PROGRAMS: [(&str, u32); 2] = [
    ("connect_unix", CGROUP_UNIX_CONNECT),
    ("sendmsg_unix", CGROUP_UNIX_SENDMSG),
];

/// The map the unix programs judge by; pinned with the others.
pub const MAP: &str = "UNIX_RULES";

/// The helper id core.c calls `bpf_cast_to_kern_ctx` through (`BRIDLE_KFUNC_CAST_TO_KERN_CTX`
/// there). aya 0.14 cannot relocate kfunc (ksym) calls, so the object carries a helper call
/// with an id no kernel has, and [`load`] rewrites it into a kfunc call. A load that skips the
/// rewrite is refused by the verifier (unknown helper): the placeholder can never run.
const KFUNC_CAST_TO_KERN_CTX: i32 = 0x6272_6401;
const KFUNC_NAME: &str = "bpf_cast_to_kern_ctx";

/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// `src_reg` of a kfunc call.
const PSEUDO_KFUNC_CALL: u8 = 2;

/// What the daemon and `bridle run` say when the hooks are missing, and why.
pub fn not_enforced(why: &str) -> String {
    format!("unix-socket rules are not enforced, so unix connects fall outside the policy: {why}")
}

/// What `bridle status` says when they are enforced.
pub const ENFORCED: &str =
    "cgroup connect_unix/sendmsg_unix (exact address match; non-canonical paths refused)";

/// The loaded unix programs and the cgroup links this process holds.
pub struct UnixHooks {
    programs: Vec<(&'static str, u32, OwnedFd)>,
    links: BTreeMap<u64, OwnedFd>,
    next_link: u64,
}

/// Whether the unix hooks run here.
pub enum UnixState {
    /// Loaded: unix connects and sends of every attached cgroup are judged.
    Enforced(UnixHooks),
    /// The kernel (or the pins adopted) cannot have them; why, in the operator's words.
    Unavailable(String),
}

impl UnixState {
    /// Loads the programs from `object` with the maps `map_fd` names, or says why not.
    pub fn load<'m>(
        object: &[u8],
        btf: &Btf,
        map_fd: &dyn Fn(&str) -> Option<BorrowedFd<'m>>,
    ) -> UnixState {
        match load(object, btf, map_fd) {
            Ok(programs) => UnixState::Enforced(UnixHooks {
                programs,
                links: BTreeMap::new(),
                next_link: 0,
            }),
            Err(err) => UnixState::Unavailable(format!(
                "this kernel did not load the connect_unix/sendmsg_unix cgroup hooks (Linux 6.7 and later have them): {err:#}"
            )),
        }
    }

    /// Opens the programs pinned under `programs` (the daemon's pin directory); `None` when
    /// they are not all there.
    pub fn from_pins(programs: &Path) -> Result<Option<UnixState>> {
        let mut out = Vec::new();
        for (name, attach) in PROGRAMS {
            let path = programs.join(name);
            if !path.exists() {
                return Ok(None);
            }
            let fd = bpf_sys::obj_get(&path)
                .with_context(|| format!("opening the pinned program {}", path.display()))?;
            out.push((name, attach, fd));
        }
        Ok(Some(UnixState::Enforced(UnixHooks {
            programs: out,
            links: BTreeMap::new(),
            next_link: 0,
        })))
    }

    /// The hooks, when they are loaded.
    pub fn hooks(&mut self) -> Option<&mut UnixHooks> {
        match self {
            UnixState::Enforced(h) => Some(h),
            UnixState::Unavailable(_) => None,
        }
    }

    /// Why the hooks are missing; `None` when they are enforced.
    pub fn unavailable(&self) -> Option<&str> {
        match self {
            UnixState::Enforced(_) => None,
            UnixState::Unavailable(why) => Some(why),
        }
    }
}

impl UnixHooks {
    /// Attaches every unix program at the cgroup open as `dir`; returns (program name, link
    /// id) pairs. The links stay attached while this process holds them (see
    /// [`UnixHooks::take_link`]).
    pub fn attach(&mut self, dir: &File, cgroup: &Path) -> Result<Vec<(&'static str, u64)>> {
        let mut out = Vec::new();
        for (name, attach, prog) in &self.programs {
            // A cgroup link coexists with every other link at this cgroup and its ancestors
            // (a daemon's programs and a nested `bridle run`), as aya's links do.
            let link = bpf_sys::link_create(prog.as_fd(), dir.as_fd(), *attach)
                .with_context(|| format!("attaching {name} at {}", cgroup.display()))?;
            let id = self.next_link;
            self.next_link += 1;
            self.links.insert(id, link);
            out.push((*name, id));
        }
        Ok(out)
    }

    /// Hands over a link's descriptor (to pin it); the link then lives as long as the
    /// descriptor or its pin.
    pub fn take_link(&mut self, id: u64) -> Option<OwnedFd> {
        self.links.remove(&id)
    }

    /// Pins every program under `programs` (a directory of the daemon's pin directory).
    pub fn pin(&self, programs: &Path) -> Result<()> {
        for (name, _, fd) in &self.programs {
            let path = programs.join(name);
            bpf_sys::obj_pin(fd.as_fd(), &path)
                .with_context(|| format!("pinning program {name} at {}", path.display()))?;
        }
        Ok(())
    }
}

/// Parses `object`, relocates the unix programs as aya's loader relocates its own, and loads
/// them for their unix attach types.
fn load<'m>(
    object: &[u8],
    btf: &Btf,
    map_fd: &dyn Fn(&str) -> Option<BorrowedFd<'m>>,
) -> Result<Vec<(&'static str, u32, OwnedFd)>> {
    let kfunc = btf
        .id_by_type_name_kind(KFUNC_NAME, BtfKind::Func)
        .map_err(|_| anyhow!("the kernel has no kfunc {KFUNC_NAME}"))?;
    let mut obj = Object::parse(object).context("parsing bridle's eBPF object")?;
    // CO-RE first, over the whole object: its relocation records name every section.
    obj.relocate_btf(btf)
        .context("relocating the unix programs against the kernel BTF")?;
    // As aya's loader: every section with code counts as text for relocation purposes.
    let text: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    let program_sections: HashSet<usize> = obj.programs.values().map(|p| p.section_index).collect();
    let wanted: Vec<&str> = PROGRAMS.iter().map(|(n, _)| *n).collect();
    obj.programs
        .retain(|name, _| wanted.contains(&name.as_str()));
    // Only the unix programs and the shared code they may call (sections that hold no
    // program) are relocated and linked; the other programs' maps need not be at hand.
    let keep: HashSet<usize> = obj
        .programs
        .values()
        .map(|p| p.section_index)
        .chain(text.difference(&program_sections).copied())
        .collect();
    obj.functions
        .retain(|(section, _), _| keep.contains(section));
    let maps: Vec<(String, aya_obj::Map)> = obj.maps.drain().collect();
    // A map the caller does not have is left out: relocation fails, naming it, only if the
    // unix programs use it.
    let fds: Vec<(&str, i32, &aya_obj::Map)> = maps
        .iter()
        .filter_map(|(name, map)| Some((name.as_str(), map_fd(name)?.as_raw_fd(), map)))
        .collect();
    obj.relocate_maps(fds.into_iter(), &text)
        .context("relocating the unix programs' map references")?;
    obj.relocate_calls(&text)
        .context("linking the unix programs' calls")?;
    let mut loaded = Vec::new();
    for (name, attach) in PROGRAMS {
        let program = obj
            .programs
            .get(name)
            .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
        let function = obj
            .functions
            .get(&program.function_key())
            .ok_or_else(|| anyhow!("the eBPF object has no code for {name}"))?;
        let mut insns = function.instructions.clone();
        let rewritten = rewrite_kfunc_calls(&mut insns, kfunc);
        if rewritten == 0 {
            bail!("{name} has no {KFUNC_NAME} placeholder: the object and the loader disagree");
        }
        let fd = bpf_sys::prog_load(&ProgLoad {
            prog_type: bpf_sys::PROG_TYPE_CGROUP_SOCK_ADDR,
            expected_attach_type: attach,
            insns: &insns,
            license: &program.license,
            name,
        })
        .with_context(|| format!("loading {name} (BPF_CGROUP_UNIX_* attach type)"))?;
        loaded.push((name, attach, fd));
    }
    Ok(loaded)
}

/// Turns every placeholder helper call into a call of kfunc `btf_id` (in vmlinux's BTF);
/// returns how many it rewrote.
fn rewrite_kfunc_calls(insns: &mut [bpf_insn], btf_id: u32) -> usize {
    let mut n = 0;
    for ins in insns.iter_mut() {
        if ins.code == CALL && ins.src_reg() == 0 && ins.imm == KFUNC_CAST_TO_KERN_CTX {
            ins.set_src_reg(PSEUDO_KFUNC_CALL);
            ins.imm = btf_id as i32;
            // off 0: the kfunc is in vmlinux, not in a module's BTF.
            ins.off = 0;
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(src: u8, imm: i32) -> bpf_insn {
        // SAFETY: bpf_insn is plain old data; all zeroes is a valid instruction.
        let mut ins: bpf_insn = unsafe { std::mem::zeroed() };
        ins.code = CALL;
        ins.imm = imm;
        ins.set_src_reg(src);
        ins
    }

    #[test]
    fn only_the_placeholder_becomes_a_kfunc_call() {
        let mut insns = vec![
            call(0, 113),
            call(0, KFUNC_CAST_TO_KERN_CTX),
            call(1, KFUNC_CAST_TO_KERN_CTX),
        ];
        assert_eq!(rewrite_kfunc_calls(&mut insns, 4242), 1);
        assert_eq!((insns[0].src_reg(), insns[0].imm), (0, 113));
        assert_eq!(
            (insns[1].src_reg(), insns[1].imm),
            (PSEUDO_KFUNC_CALL, 4242)
        );
        assert_eq!(insns[2].src_reg(), 1, "a BPF-to-BPF call is left alone");
    }

    #[test]
    fn the_object_carries_the_unix_programs_with_their_placeholder() {
        let obj = Object::parse(super::super::OBJECT).expect("the object parses");
        for (name, _) in PROGRAMS {
            let program = obj
                .programs
                .get(name)
                .expect("the program is in the object");
            let insns = &obj.functions[&program.function_key()].instructions;
            assert!(
                insns
                    .iter()
                    .any(|i| i.code == CALL && i.imm == KFUNC_CAST_TO_KERN_CTX),
                "{name} calls the kfunc placeholder"
            );
        }
    }
}
