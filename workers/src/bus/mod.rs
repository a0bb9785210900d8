//! Transports between the workers: Kafka in a cluster, an in-process bus in standalone mode, behind one
//! small interface so sources, alerts and fan-out run the same code either way.

pub mod kafka;

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
