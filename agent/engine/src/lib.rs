//! bridle's policy engine.
//!
//! One deterministic function from (policy, action, object) to a [`Verdict`] that names the rule
//! that decided, why, and what would change the outcome. The engine has no dependency on aya,
//! the kernel or the daemon, so the CLI, the daemon and property tests all drive the same code.

mod canonical;
pub mod clock;
pub mod compile;
pub mod connect;
pub mod diagnostic;
pub mod duration;
mod engine;
pub mod exec;
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
