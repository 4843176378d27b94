//! Shared helpers for bridle's integration tests.
