//! One event as every subscriber receives it: rendered and framed once, shared by reference.

use bytes::{Bytes, BytesMut};

use super::cursor::Cursor;
use super::payload::Kind;

/// One event, serialised once and shared by every subscriber.
#[derive(Debug)]
pub struct Event {
    /// Position in the hub (dense, starts at 0).
    pub seq: u64,
    /// Kafka partition.
    pub partition: usize,
    /// Kafka offset.
    pub offset: i64,
    /// Symbol (the Kafka key).
    pub symbol: Box<str>,
    /// Kind, for `types=` filters.
    pub kind: Kind,
    /// Event time (record timestamp), milliseconds since the epoch.
    pub time_ms: i64,
    /// The hub's cursor after this event: the `id:`.
    pub cursor: Cursor,
    /// The complete SSE frame: `id: …\ndata: …\n\n`.
    pub frame: Bytes,
    /// Where the frame's `data:` line starts (to re-use it under another id).
    pub body_start: usize,
}

/// The SSE frame `id: {id}\ndata: {json}\n\n`, and where its `data:` line starts.
pub fn frame(id: &str, json: &str) -> (Bytes, usize) {
    let mut frame = BytesMut::with_capacity(json.len() + id.len() + 16);
    frame.extend_from_slice(b"id: ");
    frame.extend_from_slice(id.as_bytes());
    frame.extend_from_slice(b"\n");
    let body_start = frame.len();
    frame.extend_from_slice(b"data: ");
    frame.extend_from_slice(json.as_bytes());
    frame.extend_from_slice(b"\n\n");
    (frame.freeze(), body_start)
}

impl Event {
    /// This event's frame under a different id (a resuming client whose cursor is ahead of ours).
    pub fn frame_with_id(&self, id: &Cursor) -> Bytes {
        let mut b = BytesMut::with_capacity(self.frame.len() + 16);
        b.extend_from_slice(format!("id: {id}\n").as_bytes());
        b.extend_from_slice(&self.frame[self.body_start..]);
        b.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_keeps_its_data_line_under_another_id() {
        let (frame, body_start) = frame("0:5", "{}");
        assert_eq!(&frame[..], b"id: 0:5\ndata: {}\n\n");
        let ev = Event {
            seq: 0,
            partition: 0,
            offset: 5,
            symbol: "BTC".into(),
            kind: Kind::Tick,
            time_ms: 0,
            cursor: Cursor(vec![5]),
            frame,
            body_start,
        };
        assert_eq!(&ev.frame_with_id(&Cursor(vec![5, 9]))[..], b"id: 0:5,1:9\ndata: {}\n\n");
    }
}
