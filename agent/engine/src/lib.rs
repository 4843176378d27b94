//! bridle's policy engine.
//!
//! One deterministic function from (policy, action, object) to a [`Verdict`] that names the rule
//! that decided, why, and what would change the outcome. The engine has no dependency on aya,
//! the kernel or the daemon, so the CLI, the daemon and property tests all drive the same code.
//!
//! - [`Policy::parse`] / [`Policy::load`] validate a policy file, reporting every problem as
//!   `file:line:column: error: message`; [`Policy::digest`] hashes its canonical form, which
//!   ignores rule order and pattern order because evaluation does.
//! - [`Engine`] judges [`Object`]s by a chain of policies plus host-wide invariants:
//!   [`Engine::judge`] by the rules only, [`Engine::evaluate`] with rate limits and quarantine,
//!   [`Engine::explain`] with a trace of every rule.
//! - [`compile()`] turns a policy into the flat entries the kernel maps take;
//!   [`Compiled::lookup`] models what those maps answer.
//!
//! Choices the design left open:
//! - port `*` is 0-65535 (a connect to port 0 is possible); written ports must be 1-65535;
//! - a trailing `/**` matches everything below a directory, not the directory itself; `**`
//!   elsewhere matches zero or more components;
//! - an IPv6 network inside `::ffff:0:0/96` is an IPv4 network; IPv4-mapped targets match only
//!   IPv4 rules, so `[::/0]:*` does not cover them;
//! - among matching rules of one effect, the lowest by (no rate limit first, name) decides,
//!   which keeps verdicts independent of file order;
//! - a rate limit is a fixed window of `per` starting at the first permit it counts;
//! - the refusal that crosses a quarantine threshold is the invalidate verdict; later
//!   operations are refused with `QUARANTINED`; observed refusals are not counted.

#![deny(missing_docs)]

mod canonical;
pub mod clock;
pub mod compile;
pub mod connect;
pub mod diagnostic;
pub mod duration;
mod engine;
pub mod exec;
mod fasthash;
mod index;
mod kernel_model;
mod parse;
pub mod policy;
mod text;
pub mod verdict;

pub use clock::{Clock, ManualClock, SystemClock};
pub use compile::{
    compile, compile_with_invariants, Compiled, CompiledRule, ExecEntry, HostEntry, NetEntry,
    PortEntry, RuleId, UnixEntry,
};
pub use connect::{ConnectObject, HostPattern, Net, PortRange, Target};
pub use diagnostic::{Diagnostic, PolicyError};
pub use engine::{Engine, Object};
pub use exec::ExecPattern;
pub use kernel_model::Lookup;
pub use policy::{
    Action, Invariants, Mode, Policy, Quarantine, QuarantineAction, RateLimit, Rule, RuleMatcher,
};
pub use verdict::{Code, Effect, PolicyRef, StepOutcome, TraceStep, Verdict};
