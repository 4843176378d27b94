//! A fast non-cryptographic hasher for the lookup indexes.
//!
//! The keys of every map are written by the policy author (trusted), and lookups by a workload
//! cannot degrade a map whose contents they do not choose, so SipHash's flooding resistance buys
//! nothing here while costing a large share of each verdict. The Fx hash comes from the
//! `rustc-hash` crate, the one rustc itself uses.

/// A `HashMap` with the Fx hasher.
pub(crate) type FastMap<K, V> = rustc_hash::FxHashMap<K, V>;
