//! The network hooks beyond connect4/connect6: UDP sendmsg and raw-socket creation. (The
//! unix-socket hooks, which aya cannot load, are in [`super::unix`].)
//!
//! Kept apart from the loader in `mod.rs` so that each family of hooks is attached and
//! described in one place (the loader loads every program together, see `verify`).

use anyhow::{Context, Result};
use aya::programs::{CgroupAttachMode, CgroupSock};
use bridle_common::{Workload, EFFECT_PERMIT, EFFECT_REFUSE};
use bridle_engine::{Code, Compiled, Effect, RuleId};
use std::{fs::File, path::Path};

use super::{program, CgroupLink, Programs};

/// The sock_addr programs judging UDP datagrams sent with a destination.
pub(super) const SENDMSG_PROGRAMS: [&str; 2] = ["sendmsg4", "sendmsg6"];
/// The sock program judging socket creation.
pub(super) const SOCK_CREATE: &str = "sock_create";

/// Attaches the sendmsg and sock_create programs at the cgroup open as `dir`.
pub(super) fn attach(
    source: &mut impl Programs,
    dir: &File,
    cgroup: &Path,
) -> Result<Vec<CgroupLink>> {
    let mut links = super::attach_sock_addr(source, &SENDMSG_PROGRAMS, dir, cgroup)?;
    let prog: &mut CgroupSock = program(source, SOCK_CREATE)?;
    let id = prog
        .attach(dir, CgroupAttachMode::Single)
        .with_context(|| format!("attaching sock_create at {}", cgroup.display()))?;
    links.push(CgroupLink::Sock(SOCK_CREATE, id));
    Ok(links)
}

/// Fills in the workload's raw-socket decision from the policy. Without a rule naming `raw`
/// the answer is a refusal whatever the policy's default: a raw or packet socket sidesteps
/// every address rule, so it must be asked for by name.
pub fn set_raw(config: &mut Workload, compiled: &Compiled) {
    match compiled.raw {
        Some((effect, RuleId(rule))) => {
            config.raw_effect = if effect == Effect::Permit {
                EFFECT_PERMIT
            } else {
                EFFECT_REFUSE
            };
            config.raw_code = compiled
                .rules
                .get(rule as usize)
                .map(|r| r.code)
                .unwrap_or(Code::NoMatchingRule)
                .index();
            config.raw_rule = rule;
        }
        None => {
            config.raw_effect = EFFECT_REFUSE;
            config.raw_code = Code::NoMatchingRule.index();
            config.raw_rule = u32::MAX;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridle_engine::{compile, Policy};

    fn compiled(text: &str) -> Compiled {
        compile(&Policy::parse(text, "t.toml").expect("policy parses"))
    }

    #[test]
    fn raw_is_refused_without_a_rule_even_under_a_permit_default() {
        let mut w = Workload::default();
        set_raw(&mut w, &compiled("name = \"t\"\ndefault = \"permit\"\n"));
        assert_eq!(w.raw_effect, EFFECT_REFUSE);
        assert_eq!(w.raw_rule, u32::MAX);
    }

    #[test]
    fn a_raw_rule_decides() {
        let mut w = Workload::default();
        let c = compiled(
            "name = \"t\"\n[[rule]]\nname = \"ping\"\neffect = \"permit\"\nconnect = [\"raw\"]\n",
        );
        set_raw(&mut w, &c);
        assert_eq!(w.raw_effect, EFFECT_PERMIT);
        assert_eq!(w.raw_code, Code::Permitted.index());
        assert_eq!(c.rules[w.raw_rule as usize].name, "ping");
    }
}
