//! CoinGecko REST: `GET /api/v3/simple/price`, polled.
//!
//! CoinGecko names coins by id (`bitcoin`), not ticker: [`COIN_IDS`] maps the symbols a pipeline names.
//! A symbol missing from the table is reported once at start and skipped, never fatal.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cryptoviz_crds::SourceKind;
use cryptoviz_crds::config::{SourceConfig, WorkerConfig};
use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::value::RawValue;

use super::Source;
use super::parsed::{Downstream, ParseError, Parsed};
use super::transport::rest::{PollPlan, poll_loop};
use crate::message::{Decimal, Message, SCHEMA_VERSION, Tick};

/// Public API base URL (the pro API is `https://pro-api.coingecko.com`).
pub const DEFAULT_BASE_URL: &str = "https://api.coingecko.com";
/// Default poll interval.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// Ticker → CoinGecko coin id, for the symbols a pipeline may name.
pub const COIN_IDS: &[(&str, &str)] = &[
    ("BTC", "bitcoin"),
    ("ETH", "ethereum"),
    ("SOL", "solana"),
    ("BNB", "binancecoin"),
    ("XRP", "ripple"),
    ("ADA", "cardano"),
    ("DOGE", "dogecoin"),
    ("DOT", "polkadot"),
    ("AVAX", "avalanche-2"),
    ("LINK", "chainlink"),
    ("LTC", "litecoin"),
    ("MATIC", "matic-network"),
    ("TRX", "tron"),
    ("ATOM", "cosmos"),
    ("XLM", "stellar"),
    ("USDT", "tether"),
    ("USDC", "usd-coin"),
];

/// The CoinGecko source.
pub struct CoinGecko {
    /// Coin id → ticker, for the configured symbols that have an id.
    ids: HashMap<String, String>,
    quote: String,
    plan_url: String,
    api_key: Option<String>,
    interval: Duration,
}

impl CoinGecko {
    /// From the pipeline's symbols and this source's entry.
    pub fn new(cfg: &WorkerConfig, source: &SourceConfig) -> Self {
        let mut ids = HashMap::new();
        for sym in &cfg.symbols {
            match COIN_IDS.iter().find(|(t, _)| t.eq_ignore_ascii_case(sym)) {
                Some((_, id)) => {
                    ids.insert((*id).to_string(), sym.to_uppercase());
                }
                None => tracing::warn!(symbol = %sym, "coingecko: no coin id for this symbol; skipping it"),
            }
        }
        let base = source.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/');
        let mut id_list: Vec<&str> = ids.keys().map(String::as_str).collect();
        id_list.sort_unstable();
        let plan_url = format!(
            "{base}/api/v3/simple/price?ids={}&vs_currencies={}&include_market_cap=true&include_24hr_vol=true\
             &include_24hr_change=true&include_last_updated_at=true",
            id_list.join(","),
            cfg.quote.to_lowercase()
        );
        CoinGecko {
            ids,
            quote: cfg.quote.to_uppercase(),
            plan_url,
            api_key: super::api_key(source),
            interval: source.poll_interval_ms.map_or(DEFAULT_POLL_INTERVAL, Duration::from_millis),
        }
    }

    fn plan(&self) -> PollPlan {
        let mut headers = HeaderMap::new();
        if let Some(key) = &self.api_key
            && let Ok(mut v) = HeaderValue::from_str(key)
        {
            v.set_sensitive(true);
            // Pro keys go to pro-api.coingecko.com with their own header; demo keys to the public API.
            let name = if self.plan_url.contains("pro-api.") { "x-cg-pro-api-key" } else { "x-cg-demo-api-key" };
            headers.insert(HeaderName::from_static(name), v);
        }
        PollPlan { url: self.plan_url.clone(), headers, interval: self.interval }
    }
}

impl Source for CoinGecko {
    fn kind(&self) -> SourceKind {
        SourceKind::Coingecko
    }

    fn parse(&self, frame: &[u8], received_at: DateTime<Utc>) -> Result<Parsed, ParseError> {
        let doc: BTreeMap<&str, BTreeMap<String, &RawValue>> = serde_json::from_slice(frame)?;
        let q = self.quote.to_lowercase();
        let (k_cap, k_vol, k_chg) = (format!("{q}_market_cap"), format!("{q}_24h_vol"), format!("{q}_24h_change"));
        let mut out = Vec::with_capacity(doc.len());
        for (id, fields) in doc {
            // Coins we did not ask for (a shared proxy, a changed id) are not ours to publish.
            let Some(symbol) = self.ids.get(id) else { continue };
            let price = fields.get(q.as_str()).ok_or_else(|| ParseError::UnexpectedShape(format!("{id}: no {q}")))?;
            // CoinGecko writes null for a statistic it does not have.
            let optional = |k: &str| match fields.get(k) {
                Some(v) if v.get() != "null" => Decimal::from_raw_json(v).map(Some),
                _ => Ok(None),
            };
            let exchange_time = match fields.get("last_updated_at") {
                Some(v) => {
                    let secs: i64 = serde_json::from_str(v.get())?;
                    super::parsed::time_from_millis(secs.saturating_mul(1000))?
                }
                None => received_at,
            };
            out.push(Message::Tick(Tick {
                v: SCHEMA_VERSION,
                source: SourceKind::Coingecko,
                symbol: symbol.clone(),
                quote: self.quote.clone(),
                price: Decimal::from_raw_json(price)?,
                bid: None,
                ask: None,
                volume_24h: optional(&k_vol)?,
                market_cap: optional(&k_cap)?,
                change_24h_pct: optional(&k_chg)?,
                exchange_time,
                received_at,
            }));
        }
        Ok(out.into())
    }

    fn run(self: Arc<Self>, out: Arc<dyn Downstream>) -> BoxFuture<'static, ()> {
        let plan = self.plan();
        poll_loop(move |frame, at| self.parse(frame, at), plan, out).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scraper::test_config;

    fn source() -> CoinGecko {
        let cfg = test_config(&["BTC", "ETH", "NOPE"]);
        CoinGecko::new(&cfg, &SourceConfig { kind: SourceKind::Coingecko, ..cfg.sources[0].clone() })
    }

    #[test]
    fn parses_the_documented_sample_exactly() {
        let body = br#"{"bitcoin":{"usd":67187.33,"usd_market_cap":1317802988326.25,"usd_24h_vol":31260929299.52,"usd_24h_change":3.637,"last_updated_at":1711356300}}"#;
        let p = source().parse(body, Utc::now()).unwrap();
        let Message::Tick(t) = &p.messages[0] else { panic!("{p:?}") };
        assert_eq!((t.symbol.as_str(), t.quote.as_str(), t.price.as_str()), ("BTC", "USD", "67187.33"));
        assert_eq!(t.market_cap.as_ref().unwrap().as_str(), "1317802988326.25");
        assert_eq!(t.change_24h_pct.as_ref().unwrap().as_str(), "3.637");
        assert_eq!(t.exchange_time.timestamp(), 1_711_356_300);
    }

    #[test]
    fn maps_symbols_and_reports_unknown_ones_without_failing() {
        let s = source();
        assert!(s.plan_url.contains("ids=bitcoin,ethereum&vs_currencies=usd"), "{}", s.plan_url);
        let p = s.parse(br#"{"dogecoin":{"usd":0.1}}"#, Utc::now()).unwrap();
        assert!(p.messages.is_empty());
    }

    #[test]
    fn bad_payloads_are_errors_with_reasons() {
        let s = source();
        let reason = |b: &[u8]| s.parse(b, Utc::now()).unwrap_err().reason();
        assert_eq!(reason(br#"{"bitcoin":{"usd":671"#), "malformed_json");
        assert_eq!(reason(br#"{"bitcoin":{"usd":"abc"}}"#), "invalid_number");
        assert_eq!(reason(br#"{"bitcoin":[1,2]}"#), "unexpected_shape");
        assert_eq!(reason(br#"{"bitcoin":{"usd":1,"last_updated_at":"x"}}"#), "unexpected_shape");
    }
}
