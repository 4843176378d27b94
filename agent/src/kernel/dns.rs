//! The kernel half of host names decided at DNS time: the recvmsg programs that give resolver
//! replies the address the workload asked, and the maps the resolver writes (its own address,
//! and the address entries it installs for answered names).

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Map, MapData},
    programs::{CgroupAttachMode, CgroupSockAddr},
    Ebpf,
};
use std::{
    fs::File,
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use super::{program, Enforcer};

/// The sock_addr programs that rewrite the source of DNS replies.
const RECVMSG_PROGRAMS: [&str; 2] = ["recvmsg4", "recvmsg6"];

/// Loads the recvmsg programs.
pub(super) fn load(ebpf: &mut Ebpf) -> Result<()> {
    for name in RECVMSG_PROGRAMS {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        prog.load()
            .with_context(|| format!("loading the {name} cgroup program"))?;
    }
    Ok(())
}

/// Attaches the recvmsg programs at the cgroup open as `dir`.
pub(super) fn attach(ebpf: &mut Ebpf, dir: &File, cgroup: &Path) -> Result<()> {
    for name in RECVMSG_PROGRAMS {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        // See attach_cgroup: links coexist, so no attach flag is passed.
        prog.attach(dir, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} at {}", cgroup.display()))?;
    }
    Ok(())
}

impl Enforcer {
    /// A duplicate of the fd of map `name` (a hash map or an LPM trie), for a thread that
    /// writes entries without the loader's borrow (the DNS resolver).
    pub fn shared_map_fd(&self, name: &str) -> Result<OwnedFd> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))?;
        let data: &MapData = match map {
            Map::HashMap(data) | Map::LruHashMap(data) | Map::LpmTrie(data) => data,
            _ => bail!("map {name} is neither a hash map nor an LPM trie"),
        };
        data.fd()
            .as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("duplicating the fd of map {name}"))
    }
}
