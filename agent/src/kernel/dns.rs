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

use super::{program, CgroupLink, Enforcer, Programs};

/// The sock_addr programs that rewrite the source of DNS replies.
pub(super) const RECVMSG_PROGRAMS: [&str; 2] = ["recvmsg4", "recvmsg6"];

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
pub(super) fn attach(
    source: &mut impl Programs,
    dir: &File,
    cgroup: &Path,
) -> Result<Vec<CgroupLink>> {
    let mut links = Vec::new();
    for name in RECVMSG_PROGRAMS {
        let prog: &mut CgroupSockAddr = program(source, name)?;
        // See attach_cgroup: links coexist, so no attach flag is passed.
        let id = prog
            .attach(dir, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} at {}", cgroup.display()))?;
        links.push(CgroupLink::SockAddr(name, id));
    }
    Ok(links)
}

impl Enforcer {
    /// A duplicate of the fd of map `name` (a hash map or an LPM trie), for a thread that
    /// writes entries without the loader's borrow (the DNS resolver).
    pub fn shared_map_fd(&self, name: &str) -> Result<OwnedFd> {
        let map = self
            .objects
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
