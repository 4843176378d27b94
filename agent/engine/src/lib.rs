//! bridle's policy engine.
//!
//! One deterministic function from (policy, action, object) to a [`Verdict`] that names the rule
//! that decided, why, and what would change the outcome. The engine has no dependency on aya,
//! the kernel or the daemon, so the CLI, the daemon and property tests all drive the same code.

pub mod verdict;

pub use verdict::{Code, Effect};
