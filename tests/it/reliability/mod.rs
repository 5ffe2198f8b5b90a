//! The reliability promises of `RELIABILITY.md` (1–6), each with a test that tries to break it.
//!
//! CI runs a bounded number of crash runs; `NUDGE_RELIABILITY_FULL=1` runs the full counts (and
//! `NUDGE_RELIABILITY_RUNS=N` any count). The tests that need the failure-injection hooks get them
//! from the crate's dev-dependency on itself with the `fault-injection` feature, so a plain
//! `cargo test` builds the library and the `nudge` binary under test with the hooks compiled in
//! (they stay inert unless `NUDGE_FAULT` is set or a test arms one with `fault::scoped`).

mod acks;
mod atomic;
mod failures;
mod fencing;
mod harness;
mod mid_send;
mod outages;
