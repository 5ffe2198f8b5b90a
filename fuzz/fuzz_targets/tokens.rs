//! Tracking and unsubscribe tokens (see `nudge::fuzzing::tokens`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nudge::fuzzing::tokens(data));
