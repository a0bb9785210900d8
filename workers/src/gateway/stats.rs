//! What `/stats` and the heartbeat events report.

use bytes::Bytes;

/// What `/stats` and heartbeats report.
#[derive(serde::Serialize, Debug)]
pub struct Stats {
    /// Connected clients.
    pub clients: usize,
    /// Records read.
    pub events_received: u64,
    /// Events handed to clients.
    pub deliveries: u64,
    /// Clients disconnected for falling behind.
    pub dropped: u64,
    /// Connections refused.
    pub rejected: u64,
    /// Records that were not valid messages.
    pub invalid_records: u64,
    /// Events in the replay buffer.
    pub buffered: usize,
    /// The current cursor (the id of the latest event).
    pub cursor: String,
    /// Server time.
    pub time: String,
}

impl Stats {
    /// The heartbeat event carrying these statistics: `data: {"type":"heartbeat","data":{…}}`, no id.
    pub fn heartbeat_frame(&self) -> Bytes {
        let frame = format!(
            "data: {{\"type\":\"heartbeat\",\"data\":{}}}\n\n",
            serde_json::to_string(self).expect("stats serialise")
        );
        Bytes::from(frame)
    }
}
