//! bridle's policy engine.
//!
//! One deterministic function from (policy, action, object) to a [`Verdict`] that names the rule
//! that decided, why, and what would change the outcome. The engine has no dependency on aya,
//! the kernel or the daemon, so the CLI, the daemon and property tests all drive the same code.

mod canonical;
pub mod connect;
pub mod diagnostic;
pub mod duration;
pub mod exec;
mod parse;
pub mod policy;
pub mod verdict;

pub use connect::{ConnectObject, HostPattern, Net, PortRange, Target};
pub use diagnostic::{Diagnostic, PolicyError};
pub use exec::ExecPattern;
pub use policy::{
    Action, Invariants, Mode, Policy, Quarantine, QuarantineAction, RateLimit, Rule, RuleMatcher,
};
pub use verdict::{Code, Effect};
