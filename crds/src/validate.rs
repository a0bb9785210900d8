//! What the apiserver checks on a CryptoPipeline (the CRD's OpenAPI patterns, ranges and CEL rules), for
//! manifests that never reach an apiserver: standalone mode reads them straight from a file.
//!
//! Every error names the field path the way `kubectl` does (`spec.sources[0].pollInterval`), so a mistake
//! in a file is found as quickly as one refused at apply time. A test keeps this list equal to the
//! constraints in the generated CRD, so a new pattern in [`crate::pipeline`] cannot be forgotten here.

use std::collections::HashSet;

use kube::ResourceExt;

use crate::{CryptoPipeline, SecretKeyRef, SourceKind, TopicSpec, WorkloadSpec, duration};

pub use crate::field::FieldError;

/// A ticker as `spec.symbols` takes it: `^[A-Z0-9]{1,15}$`. The consumer holds every message's symbol to it too.
pub fn is_symbol(s: &str) -> bool {
    (1..=15).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// A quote currency as `spec.quote` takes it: `^[A-Z]{3,5}$`. The consumer holds every message's quote to it
/// too (Binance's `USDT` included).
pub fn is_quote(s: &str) -> bool {
    (3..=5).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// Every field of `p` the CRD's schema or its CEL rules would refuse, in field order (empty: valid).
pub fn validate(p: &CryptoPipeline) -> Vec<FieldError> {
    let mut v = Errors::default();
    let name = p.name_any();
    if name.is_empty() {
        v.push("metadata.name", "required".into());
    } else if !is_dns_subdomain(&name) {
        v.push("metadata.name", format!("{name:?} must be lower-case letters, digits, '-' and '.' (at most 253)"));
    }

    let s = &p.spec;
    v.len("spec.symbols", s.symbols.len(), 1, 200);
    let mut seen = HashSet::new();
    for (i, sym) in s.symbols.iter().enumerate() {
        let path = format!("spec.symbols[{i}]");
        if !is_symbol(sym) {
            v.push(&path, format!("{sym:?} must match ^[A-Z0-9]{{1,15}}$ (upper-case tickers)"));
        }
        if !seen.insert(sym) {
            v.push(&path, format!("duplicate value {sym:?}"));
        }
    }
    if !is_quote(&s.quote) {
        v.push("spec.quote", format!("{:?} must match ^[A-Z]{{3,5}}$", s.quote));
    }

    v.len("spec.sources", s.sources.len(), 1, 5);
    let mut kinds = HashSet::new();
    for (i, src) in s.sources.iter().enumerate() {
        let path = format!("spec.sources[{i}]");
        if !kinds.insert(src.kind) {
            v.push(
                &format!("{path}.kind"),
                format!("each source kind may be listed only once ({})", src.kind.as_str()),
            );
        }
        if src.kind == SourceKind::Coinmarketcap && src.api_key_secret_ref.is_none() {
            v.push(&path, "coinmarketcap requires apiKeySecretRef: a Secret holding the CoinMarketCap API key".into());
        }
        v.duration_opt(&format!("{path}.pollInterval"), src.poll_interval.as_deref());
        v.secret_ref(&format!("{path}.apiKeySecretRef"), src.api_key_secret_ref.as_ref());
        if let Some(url) = &src.base_url {
            let scheme_ok = ["http://", "https://", "ws://", "wss://"]
                .iter()
                .any(|p| url.strip_prefix(p).is_some_and(|rest| !rest.is_empty()));
            if !scheme_ok || url.chars().any(char::is_whitespace) {
                v.push(&format!("{path}.baseUrl"), format!("{url:?} must be an http(s):// or ws(s):// URL"));
            }
        }
        if let Some(rate) = src.rate {
            v.range(&format!("{path}.rate"), rate.into(), 1, 100_000);
        }
    }

    let k = &s.kafka;
    let servers_ok = !k.bootstrap_servers.is_empty()
        && k.bootstrap_servers.split(',').all(|h| !h.is_empty() && !h.chars().any(char::is_whitespace));
    if !servers_ok {
        v.push("spec.kafka.bootstrapServers", format!("{:?} must be host:port[,host:port…]", k.bootstrap_servers));
    }
    if let Some(tls) = &k.tls {
        v.secret_ref("spec.kafka.tls.caSecretRef", tls.ca_secret_ref.as_ref());
    }
    if let Some(sasl) = &k.sasl {
        v.len("spec.kafka.sasl.secretName", sasl.secret_name.len(), 1, 253);
    }
    for (role, t) in [("raw", &k.topics.raw), ("stream", &k.topics.stream), ("dlq", &k.topics.dlq)] {
        v.topic(&format!("spec.kafka.topics.{role}"), t);
    }
    if let (Some(raw), Some(stream)) = (&k.topics.raw.name, &k.topics.stream.name)
        && raw == stream
    {
        v.push("spec.kafka.topics", "the raw and stream topics must have different names".into());
    }

    if let Some(ts) = &s.timescale {
        v.secret_ref("spec.timescale.connectionSecretRef", Some(&ts.connection_secret_ref));
        if let Some(schema) = &ts.schema {
            let mut b = schema.bytes();
            let first_ok = b.next().is_some_and(|c| c.is_ascii_lowercase() || c == b'_');
            let rest_ok = schema.bytes().skip(1).all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
            if !first_ok || !rest_ok || schema.len() > 63 {
                v.push("spec.timescale.schema", format!("{schema:?} must match ^[a-z_][a-z0-9_]{{0,62}}$"));
            }
        }
        v.duration("spec.timescale.retention.ticks", &ts.retention.ticks);
        v.duration("spec.timescale.retention.trades", &ts.retention.trades);
        v.duration("spec.timescale.retention.candles", &ts.retention.candles);
        v.duration_opt("spec.timescale.compressAfter", ts.compress_after.as_deref());
    }

    v.workload("spec.scraper", &s.scraper.workload);
    v.workload("spec.consumer", &s.consumer.workload);
    v.range("spec.consumer.batchSize", s.consumer.batch_size.into(), 1, 100_000);
    v.duration("spec.consumer.flushInterval", &s.consumer.flush_interval);
    v.workload("spec.gateway", &s.gateway.workload);
    v.duration("spec.gateway.heartbeatInterval", &s.gateway.heartbeat_interval);
    v.range("spec.gateway.maxClients", s.gateway.max_clients.into(), 1, 1_000_000);
    v.range("spec.gateway.replayBuffer", s.gateway.replay_buffer.into(), 0, 1_000_000);
    v.secret_ref("spec.gateway.authSecretRef", s.gateway.auth_secret_ref.as_ref());
    v.secret_ref("spec.gateway.authPublicKeysSecretRef", s.gateway.auth_public_keys_secret_ref.as_ref());
    if let Some(a) = &s.gateway.auth_audience {
        v.len("spec.gateway.authAudience", a.len(), 1, 256);
    }
    if let Some(i) = &s.gateway.auth_issuer {
        v.len("spec.gateway.authIssuer", i.len(), 1, 256);
    }
    v.range("spec.gateway.service.port", s.gateway.service.port.into(), 1, 65_535);
    let l = &s.gateway.limits;
    v.range("spec.gateway.limits.maxClientsPerAddress", l.max_clients_per_address.into(), 1, 1_000_000);
    v.len("spec.gateway.limits.trustedProxies", l.trusted_proxies.len(), 0, 64);
    for (i, c) in l.trusted_proxies.iter().enumerate() {
        let path = format!("spec.gateway.limits.trustedProxies[{i}]");
        v.len(&path, c.len(), 1, 43);
        if c.parse::<ipnet::IpNet>().is_err() && c.parse::<std::net::IpAddr>().is_err() {
            v.push(&path, format!("{c:?} is not a CIDR (10.0.0.0/8) or an address"));
        }
    }
    v.duration("spec.gateway.limits.headerTimeout", &l.header_timeout);
    v.duration("spec.gateway.limits.idleTimeout", &l.idle_timeout);
    v.range("spec.gateway.limits.maxRequestHeadBytes", l.max_request_head_bytes.into(), 1024, 1_048_576);
    let t = s.alerts.threshold_percent;
    if !(t > 0.0 && t <= 100.0) {
        v.push("spec.alerts.thresholdPercent", format!("thresholdPercent must be in (0, 100], got {t}"));
    }
    v.duration("spec.alerts.window", &s.alerts.window);
    v.0
}

/// Why a manifest is not a valid CryptoPipeline.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not YAML, or a value of the wrong type (serde's message names the field).
    #[error("{0}")]
    Unreadable(String),
    /// Fields the apiserver would refuse, each with its path.
    #[error("{}", list(.0))]
    Invalid(Vec<FieldError>),
}

fn list(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")
}

/// Parse a CryptoPipeline manifest as `kubectl apply --validate=strict` would check it: `apiVersion` and
/// `kind`, unknown fields, then the CRD's rules ([`validate`]), then the cross-field rules the operator reports
/// as `InvalidSpec` ([`crate::cross_field`]).
pub fn parse_manifest(text: &str) -> Result<CryptoPipeline, ManifestError> {
    let raw: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| ManifestError::Unreadable(format!("not YAML: {e}")))?;
    let errors = header(&raw);
    if !errors.is_empty() {
        return Err(ManifestError::Invalid(errors));
    }
    let p: CryptoPipeline =
        serde_json::from_value(raw.clone()).map_err(|e| ManifestError::Unreadable(e.to_string()))?;
    let typed = serde_json::to_value(&p).expect("a pipeline serialises");
    let mut errors: Vec<FieldError> = unknown_fields(&raw, &typed)
        .into_iter()
        .map(|path| FieldError { path, message: "unknown field".into() })
        .collect();
    errors.extend(validate(&p));
    errors.extend(crate::cross_field::check(&p));
    if errors.is_empty() { Ok(p) } else { Err(ManifestError::Invalid(errors)) }
}

/// `apiVersion` and `kind` of a manifest as written (checked before it is parsed as a CryptoPipeline, so
/// a Deployment given by mistake is named as such rather than reported as missing fields).
pub fn header(raw: &serde_json::Value) -> Vec<FieldError> {
    let mut v = Errors::default();
    for (field, want) in [("apiVersion", "cryptoviz.io/v1alpha1"), ("kind", "CryptoPipeline")] {
        match raw.get(field).and_then(|x| x.as_str()) {
            Some(got) if got == want => {}
            Some(got) => v.push(field, format!("expected {want}, got {got:?}")),
            None => v.push(field, format!("required ({want})")),
        }
    }
    v.0
}

/// Fields present in `raw` (the manifest as written) that the typed pipeline `typed` dropped: misspelt or
/// unknown, which `kubectl apply` refuses with strict field validation. Empty values (`[]`, `{}`, `null`)
/// are ignored: the types omit them when serialising.
pub fn unknown_fields(raw: &serde_json::Value, typed: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_unknown("", raw, typed, &mut out);
    out
}

fn walk_unknown(path: &str, raw: &serde_json::Value, typed: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (raw, typed) {
        (Value::Object(r), Value::Object(t)) => {
            for (k, rv) in r {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match t.get(k) {
                    Some(tv) => walk_unknown(&p, rv, tv, out),
                    None if is_empty(rv) => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(r), Value::Array(t)) => {
            for (i, (rv, tv)) in r.iter().zip(t).enumerate() {
                walk_unknown(&format!("{path}[{i}]"), rv, tv, out);
            }
        }
        _ => {}
    }
}

fn is_empty(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Kubernetes object names: a DNS-1123 subdomain.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The CRD's duration pattern, `^0*[1-9][0-9]*(ms|s|m|h|d|w)([0-9]+(ms|s|m|h|d|w))*$`: the first number
/// non-zero, no spaces. [`duration::parse`] is laxer (it trims, and accepts `0s5m`), so both are checked.
fn matches_duration_pattern(s: &str) -> bool {
    let first = s.trim_start_matches('0');
    first.bytes().next().is_some_and(|b| (b'1'..=b'9').contains(&b))
        && !s.chars().any(char::is_whitespace)
        && duration::parse(s).is_ok()
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: &str, message: String) {
        self.0.push(FieldError { path: path.to_owned(), message });
    }

    fn len(&mut self, path: &str, n: usize, min: usize, max: usize) {
        if n < min {
            self.push(path, format!("at least {min} required, got {n}"));
        } else if n > max {
            self.push(path, format!("at most {max} allowed, got {n}"));
        }
    }

    fn range(&mut self, path: &str, n: i64, min: i64, max: i64) {
        if !(min..=max).contains(&n) {
            self.push(path, format!("{n} is out of range [{min}, {max}]"));
        }
    }

    fn duration(&mut self, path: &str, s: &str) {
        if !matches_duration_pattern(s) {
            self.push(path, format!("invalid duration {s:?}: expected e.g. 500ms, 30s, 5m, 1h30m, 90d, 2w"));
        }
    }

    fn duration_opt(&mut self, path: &str, s: Option<&str>) {
        if let Some(s) = s {
            self.duration(path, s);
        }
    }

    fn secret_ref(&mut self, path: &str, r: Option<&SecretKeyRef>) {
        if let Some(r) = r {
            self.len(&format!("{path}.name"), r.name.len(), 1, 253);
            self.len(&format!("{path}.key"), r.key.len(), 1, 253);
        }
    }

    fn topic(&mut self, path: &str, t: &TopicSpec) {
        if let Some(name) = &t.name {
            let p = format!("{path}.name");
            if name.is_empty()
                || name.len() > 249
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                self.push(&p, format!("{name:?} must be 1-249 of letters, digits, '.', '_', '-'"));
            } else if name == "." || name == ".." {
                self.push(&p, "a topic may not be named '.' or '..'".into());
            }
        }
        self.range(&format!("{path}.partitions"), t.partitions.into(), 1, 10_000);
        self.range(&format!("{path}.replicationFactor"), t.replication_factor.into(), 1, 32);
        self.duration(&format!("{path}.retention"), &t.retention);
        for key in t.config.keys() {
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.') {
                self.push(&format!("{path}.config"), format!("key {key:?}: lower-case words separated by dots"));
            }
        }
    }

    fn workload(&mut self, path: &str, w: &WorkloadSpec) {
        self.range(&format!("{path}.replicas"), w.replicas.into(), 0, 100);
        if let Some(image) = &w.image {
            self.len(&format!("{path}.image"), image.len(), 1, 512);
        }
    }
}

/// The schema paths (in the generated CRD) of every constraint [`validate`] enforces, for the drift test.
#[cfg(test)]
const COVERED: &[&str] = &[
    "spec.alerts.thresholdPercent:rule",
    "spec.alerts.window:pattern",
    "spec.consumer.batchSize:range",
    "spec.consumer.flushInterval:pattern",
    "spec.consumer.image:length",
    "spec.consumer.replicas:range",
    "spec.gateway.authAudience:length",
    "spec.gateway.authIssuer:length",
    "spec.gateway.authPublicKeysSecretRef.key:length",
    "spec.gateway.authPublicKeysSecretRef.name:length",
    "spec.gateway.authSecretRef.key:length",
    "spec.gateway.authSecretRef.name:length",
    "spec.gateway.heartbeatInterval:pattern",
    "spec.gateway.limits.headerTimeout:pattern",
    "spec.gateway.limits.idleTimeout:pattern",
    "spec.gateway.limits.maxClientsPerAddress:range",
    "spec.gateway.limits.maxRequestHeadBytes:range",
    "spec.gateway.limits.trustedProxies:length",
    "spec.gateway.limits.trustedProxies[]:length",
    "spec.gateway.image:length",
    "spec.gateway.maxClients:range",
    "spec.gateway.replayBuffer:range",
    "spec.gateway.replicas:range",
    "spec.gateway.service.port:range",
    "spec.kafka.bootstrapServers:length",
    "spec.kafka.bootstrapServers:pattern",
    "spec.kafka.sasl.secretName:length",
    "spec.kafka.tls.caSecretRef.key:length",
    "spec.kafka.tls.caSecretRef.name:length",
    "spec.kafka.topics:rule",
    // Transition rules (`oldSelf`): they judge an update, and a manifest read from a file never is one.
    "spec.kafka.topics.dlq:rule",
    "spec.kafka.topics.raw:rule",
    "spec.kafka.topics.stream:rule",
    "spec.kafka.topics.dlq.config:rule",
    "spec.kafka.topics.dlq.name:length",
    "spec.kafka.topics.dlq.name:pattern",
    "spec.kafka.topics.dlq.name:rule",
    "spec.kafka.topics.dlq.partitions:range",
    "spec.kafka.topics.dlq.partitions:rule",
    "spec.kafka.topics.dlq.replicationFactor:range",
    "spec.kafka.topics.dlq.replicationFactor:rule",
    "spec.kafka.topics.dlq.retention:pattern",
    "spec.kafka.topics.raw.config:rule",
    "spec.kafka.topics.raw.name:length",
    "spec.kafka.topics.raw.name:pattern",
    "spec.kafka.topics.raw.name:rule",
    "spec.kafka.topics.raw.partitions:range",
    "spec.kafka.topics.raw.partitions:rule",
    "spec.kafka.topics.raw.replicationFactor:range",
    "spec.kafka.topics.raw.replicationFactor:rule",
    "spec.kafka.topics.raw.retention:pattern",
    "spec.kafka.topics.stream.config:rule",
    "spec.kafka.topics.stream.name:length",
    "spec.kafka.topics.stream.name:pattern",
    "spec.kafka.topics.stream.name:rule",
    "spec.kafka.topics.stream.partitions:range",
    "spec.kafka.topics.stream.partitions:rule",
    "spec.kafka.topics.stream.replicationFactor:range",
    "spec.kafka.topics.stream.replicationFactor:rule",
    "spec.kafka.topics.stream.retention:pattern",
    "spec.quote:pattern",
    "spec.scraper.image:length",
    "spec.scraper.replicas:range",
    "spec.sources:length",
    "spec.sources:rule",
    "spec.sources[].apiKeySecretRef.key:length",
    "spec.sources[].apiKeySecretRef.name:length",
    "spec.sources[].baseUrl:pattern",
    "spec.sources[].pollInterval:pattern",
    "spec.sources[].rate:range",
    // `minimum: 0` of a u64: enforced by the type (a negative seed does not parse).
    "spec.sources[].seed:range",
    "spec.sources[]:rule",
    "spec.symbols:length",
    "spec.symbols[]:pattern",
    "spec.timescale.compressAfter:pattern",
    "spec.timescale.connectionSecretRef.key:length",
    "spec.timescale.connectionSecretRef.name:length",
    "spec.timescale.retention.candles:pattern",
    "spec.timescale.retention.ticks:pattern",
    "spec.timescale.retention.trades:pattern",
    "spec.timescale.schema:pattern",
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn pipeline(yaml: &str) -> CryptoPipeline {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const HEAD: &str = "apiVersion: cryptoviz.io/v1alpha1\nkind: CryptoPipeline\nmetadata: {name: p}\n";

    fn errors(spec: &str) -> Vec<String> {
        validate(&pipeline(&format!("{HEAD}spec:\n{spec}"))).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_examples_are_valid() {
        for f in ["synthetic.yaml", "coingecko-kraken.yaml", "redpanda-sasl-tls.yaml"] {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/examples/").to_owned() + f;
            let p: CryptoPipeline = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(validate(&p), vec![], "{f}");
        }
    }

    #[test]
    fn errors_name_the_field_path() {
        let e = errors(
            "  symbols: [BTC, btc, BTC]\n  quote: usd\n\
             \x20 sources: [{kind: synthetic, pollInterval: soon, rate: 0}, {kind: synthetic}, {kind: coinmarketcap}]\n\
             \x20 kafka: {bootstrapServers: 'a:1, b:2', topics: {raw: {name: x, partitions: 0}, stream: {name: x}}}\n\
             \x20 alerts: {thresholdPercent: 0, window: 0s5m}\n",
        );
        let want = [
            r#"spec.symbols[1]: "btc" must match ^[A-Z0-9]{1,15}$ (upper-case tickers)"#,
            r#"spec.symbols[2]: duplicate value "BTC""#,
            r#"spec.quote: "usd" must match ^[A-Z]{3,5}$"#,
            r#"spec.sources[0].pollInterval: invalid duration "soon": expected e.g. 500ms, 30s, 5m, 1h30m, 90d, 2w"#,
            "spec.sources[0].rate: 0 is out of range [1, 100000]",
            "spec.sources[1].kind: each source kind may be listed only once (synthetic)",
            "spec.sources[2]: coinmarketcap requires apiKeySecretRef: a Secret holding the CoinMarketCap API key",
            r#"spec.kafka.bootstrapServers: "a:1, b:2" must be host:port[,host:port…]"#,
            "spec.kafka.topics.raw.partitions: 0 is out of range [1, 10000]",
            "spec.kafka.topics: the raw and stream topics must have different names",
            "spec.alerts.thresholdPercent: thresholdPercent must be in (0, 100], got 0",
            r#"spec.alerts.window: invalid duration "0s5m": expected e.g. 500ms, 30s, 5m, 1h30m, 90d, 2w"#,
        ];
        assert_eq!(e, want);
    }

    #[test]
    fn header_and_empty_lists_are_checked() {
        let raw: serde_json::Value = serde_saphyr::from_str("apiVersion: v1\nkind: Pod\n").unwrap();
        let e: Vec<_> = header(&raw).iter().map(ToString::to_string).collect();
        assert_eq!(
            e,
            [r#"apiVersion: expected cryptoviz.io/v1alpha1, got "v1""#, r#"kind: expected CryptoPipeline, got "Pod""#]
        );
        let p = pipeline(&format!("{HEAD}spec: {{symbols: [], sources: [], kafka: {{bootstrapServers: ''}}}}\n"));
        let paths: Vec<_> = validate(&p).into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["spec.symbols", "spec.sources", "spec.kafka.bootstrapServers"]);
        let mut bad = pipeline(&format!(
            "{HEAD}spec: {{symbols: [BTC], sources: [{{kind: synthetic}}], kafka: {{bootstrapServers: k:1}}}}\n"
        ));
        bad.metadata.name = Some("Bad_Name".into());
        assert_eq!(validate(&bad)[0].path, "metadata.name");
    }

    #[test]
    fn manifests_are_parsed_and_checked() {
        let ok = format!(
            "{HEAD}spec: {{symbols: [BTC], sources: [{{kind: synthetic}}], kafka: {{bootstrapServers: k:1}}}}\n"
        );
        assert_eq!(parse_manifest(&ok).unwrap().spec.symbols, ["BTC"]);
        let bad = ok.replace("{kind: synthetic}", "{kind: synthetic, pollInterval: soon, colour: red}");
        let e = parse_manifest(&bad).unwrap_err().to_string();
        assert_eq!(
            e,
            "  spec.sources[0].colour: unknown field\n  spec.sources[0].pollInterval: invalid duration \"soon\": \
             expected e.g. 500ms, 30s, 5m, 1h30m, 90d, 2w"
        );
        assert!(matches!(parse_manifest("a: [").unwrap_err(), ManifestError::Unreadable(_)));
        let e = parse_manifest(&ok.replace("kind: synthetic", "kind: bitstamp")).unwrap_err().to_string();
        assert!(e.contains("bitstamp"), "{e}");
    }

    #[test]
    fn unknown_fields_are_found_with_their_path() {
        let yaml = format!(
            "{HEAD}spec: {{symbols: [BTC], sources: [{{kind: synthetic, pollIntervall: 5s}}], kafka: {{bootstrapServers: k:1}}, gateway: {{corsOrigins: []}}, colour: red}}\n"
        );
        let raw: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        let typed = serde_json::to_value(pipeline(&yaml)).unwrap();
        assert_eq!(unknown_fields(&raw, &typed), ["spec.colour", "spec.sources[0].pollIntervall"]);
    }

    /// Every pattern, length, range and CEL rule in the generated CRD is one this module checks: adding a
    /// constraint to the types without checking it here fails this test.
    #[test]
    fn covers_every_constraint_of_the_generated_crd() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(CryptoPipeline::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut found = BTreeSet::new();
        collect("spec", schema, &mut found);
        let covered: BTreeSet<String> = COVERED.iter().map(|s| s.to_string()).collect();
        let missing: Vec<_> = found.difference(&covered).collect();
        let stale: Vec<_> = covered.difference(&found).collect();
        assert!(missing.is_empty() && stale.is_empty(), "not validated: {missing:?}; no longer in the CRD: {stale:?}");
    }

    fn collect(path: &str, s: &serde_json::Value, out: &mut BTreeSet<String>) {
        let has = |k: &str| s.get(k).is_some();
        if has("pattern") {
            out.insert(format!("{path}:pattern"));
        }
        if has("minLength") || has("maxLength") || has("minItems") || has("maxItems") {
            out.insert(format!("{path}:length"));
        }
        if has("minimum") || has("maximum") {
            out.insert(format!("{path}:range"));
        }
        if has("x-kubernetes-validations") {
            out.insert(format!("{path}:rule"));
        }
        if let Some(props) = s.get("properties").and_then(|p| p.as_object()) {
            for (k, v) in props {
                collect(&format!("{path}.{k}"), v, out);
            }
        }
        if let Some(items) = s.get("items") {
            collect(&format!("{path}[]"), items, out);
        }
    }
}
