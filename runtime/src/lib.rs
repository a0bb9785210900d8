//! What the operator and every worker mode share at run time, so that each is done one way:
//!
//! - [`health`]: the HTTP server for `/health`, `/ready` and `/metrics` every binary serves;
//! - [`backoff`]: exponential backoff with random jitter, for every retry loop;
//! - [`storage`]: the pipeline's database schema, its migrations and its retention/compression policies,
//!   applied by the operator's storage reconciliation and by `cryptoviz-worker standalone --timescale`.
//!
//! Pure desired state (topics, worker configuration) lives in `cryptoviz-crds`, beside the API it derives
//! from; this crate holds what needs a runtime (Tokio, axum, sqlx).

pub mod backoff;
pub mod health;
pub mod storage;
