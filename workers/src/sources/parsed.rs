//! What a source's parser produces, why it may refuse a payload, and the receiving end of a source.
//!
//! A leaf: it knows messages and nothing of sources, transports or the scraper, so both sides of the
//! source → scraper hand-over import it without importing each other.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::message::{InvalidDecimal, Message};

/// Why a payload was skipped. Each is counted by source and [`ParseError::reason`], never a panic.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON, or cut short.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// JSON, but not the documented shape (wrong types, missing fields).
    #[error("unexpected shape: {0}")]
    UnexpectedShape(String),
    /// A price or quantity that is not a decimal number.
    #[error(transparent)]
    InvalidNumber(#[from] InvalidDecimal),
    /// A timestamp out of range or unparsable.
    #[error("invalid time: {0}")]
    InvalidTime(String),
    /// The source answered with an error document.
    #[error("source error {code}: {message}")]
    Api {
        /// The source's error code.
        code: i64,
        /// The source's message.
        message: String,
    },
}

impl ParseError {
    /// A short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::MalformedJson(_) => "malformed_json",
            ParseError::UnexpectedShape(_) => "unexpected_shape",
            ParseError::InvalidNumber(_) => "invalid_number",
            ParseError::InvalidTime(_) => "invalid_time",
            ParseError::Api { .. } => "api_error",
        }
    }
}

impl From<serde_json::Error> for ParseError {
    fn from(e: serde_json::Error) -> Self {
        match e.classify() {
            serde_json::error::Category::Data => ParseError::UnexpectedShape(e.to_string()),
            _ => ParseError::MalformedJson(e.to_string()),
        }
    }
}

/// What one frame or response body held.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    /// Normalised messages.
    pub messages: Vec<Message>,
    /// The source announced it is going away (Binance `serverShutdown`): reconnect now.
    pub reconnect: bool,
}

impl From<Vec<Message>> for Parsed {
    fn from(messages: Vec<Message>) -> Self {
        Parsed { messages, reconnect: false }
    }
}

/// Milliseconds since the epoch to a time, or why not.
pub(crate) fn time_from_millis(ms: i64) -> Result<DateTime<Utc>, ParseError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| ParseError::InvalidTime(ms.to_string()))
}

/// RFC 3339 text to a time, or why not.
pub(crate) fn time_from_rfc3339(s: &str) -> Result<DateTime<Utc>, ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).map_err(|_| ParseError::InvalidTime(s.into()))
}

/// Where a running source hands what it parsed or generated, and what happens to its connection. The
/// scraper's `Outlet` is the one implementation; a trait so that sources never import the scraper.
pub trait Downstream: Send + Sync + 'static {
    /// One payload (frame or response body) arrived at `received_at`, `bytes` long, and parsed to `parsed`.
    /// Returns true when the source asked to reconnect.
    fn payload(&self, received_at: DateTime<Utc>, bytes: usize, parsed: Result<Parsed, ParseError>) -> bool;
    /// Messages a source made itself, with no payload (the synthetic market).
    fn generated(&self, messages: Vec<Message>);
    /// The source delivers (or stopped).
    fn set_up(&self, up: bool);
    /// A stream connection ended for `reason` and will be re-established.
    fn reconnecting(&self, reason: &'static str);
    /// A request or connection attempt failed for `reason`.
    fn request_failed(&self, reason: &'static str);
    /// A request or handshake completed in `took`.
    fn observe_request(&self, took: Duration);
}
