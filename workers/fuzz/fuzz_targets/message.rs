#![no_main]
//! The record decoder (what the consumer and the gateway read from the topics) on arbitrary payloads.
libfuzzer_sys::fuzz_target!(|payload: &[u8]| cryptoviz_workers_fuzz::record(payload));
