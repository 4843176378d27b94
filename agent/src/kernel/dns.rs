//! The kernel half of host names decided at DNS time: the recvmsg programs that give resolver
//! replies the address the workload asked, and the maps the resolver writes (its own address,
//! and the address entries it installs for answered names).

use anyhow::Result;
use std::{fs::File, path::Path};

use super::{CgroupLink, Programs};

/// The sock_addr programs that rewrite the source of DNS replies.
pub(super) const RECVMSG_PROGRAMS: [&str; 2] = ["recvmsg4", "recvmsg6"];

/// Attaches the recvmsg programs at the cgroup open as `dir`.
pub(super) fn attach(
    source: &mut impl Programs,
    dir: &File,
    cgroup: &Path,
) -> Result<Vec<CgroupLink>> {
    super::attach_sock_addr(source, &RECVMSG_PROGRAMS, dir, cgroup)
}
