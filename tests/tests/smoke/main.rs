//! Smoke tests: each real server of the test environment is up and usable from our own code.
//! They fail (never skip) when a server is down.

mod k8s;
mod kafka;
mod postgres;
mod prometheus;
mod timescale;
