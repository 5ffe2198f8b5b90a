//! Templates compiled and rendered with hostile data (see `nudge::fuzzing::template`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nudge::fuzzing::template(data));
