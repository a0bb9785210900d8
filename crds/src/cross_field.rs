//! Rules across fields that CEL cannot check. Our durations have days and weeks (`90d`, `2w`), which CEL's
//! `duration()` does not parse, so a rule comparing two of them cannot be a CEL rule: the operator reports a
//! breach as the `InvalidSpec` reason on `Ready` (and a Warning event) and applies nothing, and standalone
//! refuses the manifest with the same message ([`crate::validate::parse_manifest`]).

use crate::field::FieldError;
use crate::{CryptoPipeline, duration};

/// Every cross-field rule `p` breaks, in field order (empty: none). Fields that do not parse are left to
/// the schema's own checks.
pub fn check(p: &CryptoPipeline) -> Vec<FieldError> {
    let mut out = vec![];
    if let Some(ts) = &p.spec.timescale
        && let Some(compress) = ts.compress_after.as_deref()
        && let Ok(after) = duration::parse(compress)
    {
        // Compression runs on ticks and trades (candles are not compressed).
        for (table, retention) in [("ticks", &ts.retention.ticks), ("trades", &ts.retention.trades)] {
            if duration::parse(retention).is_ok_and(|kept| after >= kept) {
                out.push(FieldError {
                    path: "spec.timescale.compressAfter".into(),
                    message: format!(
                        "{compress} is not shorter than retention.{table} ({retention}): chunks would be dropped before they are compressed"
                    ),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(timescale: serde_json::Value) -> CryptoPipeline {
        let spec = serde_json::json!({"symbols": ["BTC"], "sources": [{"kind": "synthetic"}],
            "kafka": {"bootstrapServers": "k:9092"}, "timescale": timescale});
        CryptoPipeline::new("p", serde_json::from_value(spec).unwrap())
    }

    #[test]
    fn compression_must_start_before_retention_drops_the_chunk() {
        let url = serde_json::json!({"name": "db", "key": "url"});
        let errors = |t: serde_json::Value| -> Vec<String> { check(&with(t)).iter().map(|e| e.to_string()).collect() };
        assert_eq!(
            errors(
                serde_json::json!({"connectionSecretRef": url, "compressAfter": "60d", "retention": {"ticks": "90d", "trades": "30d"}})
            ),
            [
                "spec.timescale.compressAfter: 60d is not shorter than retention.trades (30d): chunks would be dropped before they are compressed"
            ]
        );
        // Equal is refused too: the chunk goes the moment it could be compressed.
        assert_eq!(
            errors(
                serde_json::json!({"connectionSecretRef": url, "compressAfter": "4w", "retention": {"ticks": "28d"}})
            )
            .len(),
            1
        );
        assert!(errors(serde_json::json!({"connectionSecretRef": url, "compressAfter": "7d"})).is_empty());
        assert!(errors(serde_json::json!({"connectionSecretRef": url})).is_empty());
        // Candles are not compressed: a short candle retention is no conflict.
        assert!(
            errors(
                serde_json::json!({"connectionSecretRef": url, "compressAfter": "7d", "retention": {"candles": "1d"}})
            )
            .is_empty()
        );
    }
}
