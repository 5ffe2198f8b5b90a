//! Whole rules folders: YAML, CEL and templates through the real compiler (see `nudge::fuzzing::rules`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nudge::fuzzing::rules(data));
