//! TimescaleDB storage and per-table retention.

use serde::{Deserialize, Serialize};

use super::{DeletionPolicy, SecretKeyRef};

/// TimescaleDB (or plain PostgreSQL) storage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimescaleSpec {
    /// Secret key holding the connection URL (`postgres://user:password@host:5432/db?sslmode=require`).
    pub connection_secret_ref: SecretKeyRef,

    /// Database schema for this pipeline's tables. Default: `cv_<namespace>_<name>` with `-` and `.` as `_`
    /// (at most 63 bytes), so same-named pipelines in two namespaces never share one; a pipeline whose status
    /// records the older default `cv_<name>` keeps it. A schema another pipeline marked as its own is not used:
    /// `StorageReady=False SchemaConflict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))]
    pub schema: Option<String>,

    /// How long rows are kept, per table.
    #[serde(default)]
    pub retention: RetentionSpec,

    /// Compress chunks older than this (TimescaleDB only), e.g. `7d`. Omit for no compression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^0*[1-9][0-9]*(ms|s|m|h|d|w)([0-9]+(ms|s|m|h|d|w))*$"))]
    pub compress_after: Option<String>,

    /// Retain (default) keeps the schema and its data when the pipeline is deleted. Delete drops the schema,
    /// after the worker Deployments and the topics are gone, and only when the schema carries this pipeline's
    /// owner mark (one it created). A drop that cannot finish within the operator's finalizer timeout (database
    /// unreachable, Secret gone) is abandoned with a `CleanupAbandoned` Warning event naming the schema left
    /// behind; the annotation `cryptoviz.io/skip-cleanup: "true"` skips all clean-up.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Retention per table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Tick (price) rows, default `90d`.
    #[serde(default = "default_ticks_retention")]
    #[schemars(regex(pattern = r"^0*[1-9][0-9]*(ms|s|m|h|d|w)([0-9]+(ms|s|m|h|d|w))*$"))]
    pub ticks: String,
    /// Trade rows, default `30d`.
    #[serde(default = "default_trades_retention")]
    #[schemars(regex(pattern = r"^0*[1-9][0-9]*(ms|s|m|h|d|w)([0-9]+(ms|s|m|h|d|w))*$"))]
    pub trades: String,
    /// OHLCV candles (1 minute and 1 hour), default `730d`.
    #[serde(default = "default_candles_retention")]
    #[schemars(regex(pattern = r"^0*[1-9][0-9]*(ms|s|m|h|d|w)([0-9]+(ms|s|m|h|d|w))*$"))]
    pub candles: String,
}

impl Default for RetentionSpec {
    fn default() -> Self {
        Self {
            ticks: default_ticks_retention(),
            trades: default_trades_retention(),
            candles: default_candles_retention(),
        }
    }
}

fn default_ticks_retention() -> String {
    "90d".into()
}
fn default_trades_retention() -> String {
    "30d".into()
}
fn default_candles_retention() -> String {
    "730d".into()
}
