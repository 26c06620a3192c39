//! The whole request path, bytes to bytes: see `telesink::fuzzing` for the
//! input layout and the oracle.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| telesink::fuzzing::request_path(data));
