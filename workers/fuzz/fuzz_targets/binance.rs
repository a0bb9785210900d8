#![no_main]
//! The Binance parser on arbitrary payloads.
libfuzzer_sys::fuzz_target!(|payload: &[u8]| {
    cryptoviz_workers_fuzz::source_payload(cryptoviz_crds::SourceKind::Binance, payload)
});
