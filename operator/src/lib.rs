//! The CryptoViz operator as a library: the binary in `main.rs` wires these together; integration tests and
//! benchmarks call them directly.

pub mod cache;
pub mod conditions;
pub mod controller;
pub mod incremental_alter;
pub mod leader;
pub mod metrics;
pub mod monitoring;
pub mod status;
pub mod storage;
pub mod topics;
pub mod workloads;
