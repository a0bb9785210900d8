//! CryptoViz workers: the scraper, the consumer, the SSE gateway and standalone mode, sharing one
//! configuration format ([`cryptoviz_crds::config::WorkerConfig`]), one message schema ([`message`]) and
//! one HTTP server for health and metrics ([`cryptoviz_runtime::health`]).

pub mod bus;
pub mod consumer;
pub mod gateway;
pub mod history;
pub mod message;
pub mod scraper;
pub mod sources;
pub mod standalone;
pub mod telemetry;
