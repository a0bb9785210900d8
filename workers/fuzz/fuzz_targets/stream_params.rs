#![no_main]
//! The gateway's `/stream` parameters (`symbols`, `types`, the resume id) as a hostile client sends them.
libfuzzer_sys::fuzz_target!(|input: &[u8]| cryptoviz_workers_fuzz::stream_params(input));
