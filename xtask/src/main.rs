//! `cargo xtask`: the one entry point for people and CI.

fn main() {}
