//! Segment HTTP ingestion bodies (see `nudge::fuzzing::segment` for the input format).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nudge::fuzzing::segment(data));
