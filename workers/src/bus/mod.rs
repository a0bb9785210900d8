//! Transports between the workers: Kafka in a cluster, an in-process bus in standalone mode, behind one
//! small interface so sources, alerts and fan-out run the same code either way.

pub mod kafka;
pub mod memory;

use bytes::Bytes;

/// One record read from a topic, whichever transport carried it.
#[derive(Clone, Debug)]
pub struct Record {
    /// Topic name.
    pub topic: String,
    /// Partition (always 0 on the in-process bus).
    pub partition: i32,
    /// Offset within the partition: with the partition, a position that means the same on every reader.
    pub offset: i64,
    /// Key (the symbol).
    pub key: Option<Bytes>,
    /// Payload (a [`crate::message::Message`] as JSON).
    pub payload: Bytes,
    /// Broker or bus timestamp, milliseconds since the epoch.
    pub timestamp_ms: i64,
}

/// Why a record was not accepted for sending. Each variant is a counted drop, never a silent loss.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The bounded in-flight buffer is full (e.g. the broker is down): the record is dropped, not queued.
    #[error("producer queue full")]
    QueueFull,
    /// The transport refused the record for another reason (too large, unknown topic, shut down).
    #[error("producer refused the record: {0}")]
    Refused(String),
}

impl PublishError {
    /// A short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PublishError::QueueFull => "queue_full",
            PublishError::Refused(_) => "refused",
        }
    }
}

/// A record to send: key = symbol, headers `cv-type` and `cv-source`.
#[derive(Clone, Copy, Debug)]
pub struct OutRecord<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Key (the symbol).
    pub key: &'a [u8],
    /// Payload (a [`crate::message::Message`] as JSON).
    pub payload: &'a [u8],
    /// Headers, name and value.
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// The producing side of a transport. `publish` never blocks: it accepts the record into a bounded buffer
/// or returns why not, so a slow or absent broker costs counted drops, never unbounded memory or a stall.
pub trait Publisher: Send + Sync + 'static {
    /// Hand a record to the transport.
    fn publish(&self, record: OutRecord<'_>) -> Result<(), PublishError>;
    /// Records accepted but not yet acknowledged.
    fn queue_depth(&self) -> usize;
    /// Whether the transport can currently reach its destination.
    fn connected(&self) -> bool;
    /// Wait up to `timeout` for everything accepted to be acknowledged (on shutdown).
    fn flush(&self, timeout: std::time::Duration);
}
