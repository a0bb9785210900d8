//! The transport-independent core of the gateway: records in (from Kafka or the in-process bus), one
//! serialised frame per event out to every subscriber.
//!
//! One ring of events serves as both the replay buffer and the fan-out queue: each client holds only a
//! sequence number into it, so a slow client costs nothing to the others, and "falling behind its bound"
//! is a subtraction. Every event carries the hub's cursor after it — the last offset seen on every
//! partition — which becomes the SSE `id:`. A cursor means the same on every replica ("I have everything
//! up to these offsets"), so a client can resume anywhere.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::sync::{Notify, watch};

use super::metrics::Metrics;
use super::payload::{self, Kind};
use crate::bus::Record;
use crate::message::Message;

/// Per-partition positions: `offsets[p]` is the last offset seen on partition `p` (-1: none yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor(pub Vec<i64>);

impl Cursor {
    /// The offset for a partition (-1 when unknown).
    pub fn get(&self, partition: usize) -> i64 {
        self.0.get(partition).copied().unwrap_or(-1)
    }

    /// Parse an event id (`0:123,1:98`). `None` for anything else, which the caller treats as a gap.
    pub fn parse(s: &str) -> Option<Cursor> {
        let mut v = Vec::new();
        for pair in s.trim().split(',') {
            let (p, o) = pair.split_once(':')?;
            let p: usize = p.parse().ok()?;
            let o: i64 = o.parse().ok()?;
            // Partition counts are small; refuse ids that would make us allocate absurdly.
            if p >= 65_536 || o < -1 {
                return None;
            }
            if v.len() <= p {
                v.resize(p + 1, -1);
            }
            v[p] = o;
        }
        Some(Cursor(v))
    }

    /// True when every component is at least `other`'s.
    pub fn dominates(&self, other: &Cursor) -> bool {
        (0..self.0.len().max(other.0.len())).all(|p| self.get(p) >= other.get(p))
    }

    /// Component-wise maximum.
    pub fn max(&self, other: &Cursor) -> Cursor {
        Cursor((0..self.0.len().max(other.0.len())).map(|p| self.get(p).max(other.get(p))).collect())
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (p, o) in self.0.iter().enumerate() {
            if p > 0 {
                f.write_char(',')?;
            }
            write!(f, "{p}:{o}")?;
        }
        Ok(())
    }
}

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

impl Event {
    /// This event's frame under a different id (a resuming client whose cursor is ahead of ours).
    pub fn frame_with_id(&self, id: &Cursor) -> Bytes {
        let mut b = BytesMut::with_capacity(self.frame.len() + 16);
        b.extend_from_slice(format!("id: {id}\n").as_bytes());
        b.extend_from_slice(&self.frame[self.body_start..]);
        b.freeze()
    }
}

/// Tunables of the hub.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// Events kept for resuming clients.
    pub replay_buffer: usize,
    /// How many events a client may fall behind before it is disconnected.
    pub client_queue: u64,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// The `retry:` hint, milliseconds.
    pub retry_ms: u64,
    /// Concurrent clients at most.
    pub max_clients: u32,
}

impl HubOptions {
    /// Default bound on a client's backlog: large enough for bursts, small enough to bound memory.
    pub const DEFAULT_CLIENT_QUEUE: u64 = 1024;
}

struct State {
    ring: VecDeque<Arc<Event>>,
    /// Seq of `ring[0]`.
    first_seq: u64,
    /// Seq the next event will get.
    next_seq: u64,
    /// Last offset seen per partition.
    cursor: Cursor,
    /// Per partition, the newest offset no longer in the ring (or before where we started): a client whose
    /// cursor is below it missed events we cannot replay.
    floor: Cursor,
    /// Latest `crypto_update` data object per symbol, for `welcome`.
    latest: BTreeMap<Box<str>, Bytes>,
}

/// A connected client as the hub tracks it (for the slow-client sweep and `/stats`).
pub struct ClientSlot {
    /// While the client's socket is full: the seq of the next event it will be sent, which the sweep
    /// measures its lag by. `u64::MAX` while it is written to on every event (it cannot fall behind then,
    /// and its writer does not touch this shared line per event).
    pos: AtomicU64,
    dropped: AtomicBool,
    kill: Option<Arc<Notify>>,
}

/// The fan-out hub.
pub struct Hub {
    state: RwLock<State>,
    /// `State::next_seq` as readers can check it without the lock: have events been appended since?
    published: AtomicU64,
    /// Changes when events are appended, a heartbeat is published or the hub shuts down: the one channel
    /// a client waits on (one waiter registration per wake-up, not one per kind of news).
    seq_tx: watch::Sender<u64>,
    /// The latest heartbeat frame and its generation (clients compare generations, a relaxed load).
    heartbeat: RwLock<Bytes>,
    heartbeat_gen: AtomicU64,
    /// Shutdown as clients read it on every wake-up (a relaxed load, no lock).
    down: AtomicBool,
    /// Shutdown for the housekeeping task, which must not wake on every event.
    shutdown_tx: watch::Sender<bool>,
    clients: Mutex<HashMap<u64, Arc<ClientSlot>>>,
    next_client: AtomicU64,
    invalid: AtomicU64,
    /// The gateway's metrics.
    pub metrics: Arc<Metrics>,
    /// Tunables.
    pub opts: HubOptions,
}

/// The client fell further behind than its bound.
#[derive(Debug, PartialEq, Eq)]
pub struct Lagged;

/// Where a new subscription starts.
pub struct Subscription {
    /// First seq to read.
    pub next_seq: u64,
    /// Resume cursor: skip events at or below it, and never send an id below it.
    pub floor: Option<Cursor>,
    /// The id to put on the first frame (the current cursor) when not resuming.
    pub current: Cursor,
    /// Latest price of each symbol (data objects), filtered by the caller.
    pub latest: Vec<(Box<str>, Bytes)>,
    /// True when the requested resume point is older than the buffer (or unreadable).
    pub gap: bool,
}

/// Deregisters a client when its stream is dropped.
pub struct ClientGuard {
    hub: Arc<Hub>,
    id: u64,
    /// The slot the hub watches.
    pub slot: Arc<ClientSlot>,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.hub.clients.lock().expect("clients lock").remove(&self.id);
        self.hub.metrics.clients.dec();
    }
}

impl ClientSlot {
    /// The client's socket is full at `next` (`Some`), or draining again (`None`).
    pub fn stalled_at(&self, next: Option<u64>) {
        self.pos.store(next.unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl ClientGuard {
    /// Mark this client dropped for being slow (counted once) and close its connection.
    pub fn drop_slow(&self) {
        self.hub.drop_slot(&self.slot);
    }
}

impl Hub {
    /// A hub with no partitions yet.
    pub fn new(opts: HubOptions, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Hub {
            state: RwLock::new(State {
                ring: VecDeque::with_capacity(opts.replay_buffer.min(1 << 16)),
                first_seq: 0,
                next_seq: 0,
                cursor: Cursor::default(),
                floor: Cursor::default(),
                latest: BTreeMap::new(),
            }),
            published: AtomicU64::new(0),
            seq_tx: watch::channel(0).0,
            heartbeat: RwLock::new(Bytes::new()),
            heartbeat_gen: AtomicU64::new(0),
            down: AtomicBool::new(false),
            shutdown_tx: watch::channel(false).0,
            clients: Mutex::new(HashMap::new()),
            next_client: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            metrics,
            opts,
        })
    }

    fn capacity(&self) -> usize {
        self.opts.replay_buffer.max(self.opts.client_queue as usize).max(1)
    }

    /// Declare where reading starts on each partition (`(partition, first offset to read)`): nothing before
    /// can be replayed.
    pub fn start_partitions(&self, starts: &[(usize, i64)]) {
        let mut guard = self.state.write().expect("hub lock");
        let st = &mut *guard;
        for &(p, start) in starts {
            for c in [&mut st.cursor, &mut st.floor] {
                if c.0.len() <= p {
                    c.0.resize(p + 1, -1);
                }
                c.0[p] = c.0[p].max(start - 1);
            }
        }
    }

    /// The current cursor.
    pub fn cursor(&self) -> Cursor {
        self.state.read().expect("hub lock").cursor.clone()
    }

    /// Records not carrying a valid message (skipped, still advancing the cursor).
    pub fn invalid_records(&self) -> u64 {
        self.invalid.load(Ordering::Relaxed)
    }

    /// Events currently buffered for replay.
    pub fn buffered(&self) -> usize {
        self.state.read().expect("hub lock").ring.len()
    }

    /// Connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.lock().expect("clients lock").len()
    }

    /// Take one record in: render it once, append it to the ring, wake subscribers.
    pub fn ingest(&self, rec: &Record) {
        self.metrics.events_received.inc();
        let p = usize::try_from(rec.partition).unwrap_or(0);
        // Render outside the lock: only the id depends on the hub's state.
        let rendered = match Message::from_json(&rec.payload) {
            Ok(msg) => Some((payload::render(&msg), Box::<str>::from(msg.symbol()))),
            Err(e) => {
                self.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(partition = p, offset = rec.offset, error = %e, "skipping a record that is not a message");
                None
            }
        };
        let capacity = self.capacity();
        let mut guard = self.state.write().expect("hub lock");
        let st = &mut *guard;
        for c in [&mut st.cursor, &mut st.floor] {
            if c.0.len() <= p {
                c.0.resize(p + 1, -1);
            }
        }
        // Redelivery after a broker hiccup: never go backwards.
        if rec.offset <= st.cursor.0[p] {
            return;
        }
        st.cursor.0[p] = rec.offset;
        let Some(((kind, json, data), symbol)) = rendered else { return };
        if let Some(data) = data {
            st.latest.insert(symbol.clone(), Bytes::from(data));
        }
        let id = st.cursor.to_string();
        let mut frame = BytesMut::with_capacity(json.len() + id.len() + 16);
        frame.extend_from_slice(b"id: ");
        frame.extend_from_slice(id.as_bytes());
        frame.extend_from_slice(b"\n");
        let body_start = frame.len();
        frame.extend_from_slice(b"data: ");
        frame.extend_from_slice(json.as_bytes());
        frame.extend_from_slice(b"\n\n");
        let seq = st.next_seq;
        let ev = Event {
            seq,
            partition: p,
            offset: rec.offset,
            symbol,
            kind,
            time_ms: rec.timestamp_ms,
            cursor: st.cursor.clone(),
            frame: frame.freeze(),
            body_start,
        };
        st.ring.push_back(Arc::new(ev));
        st.next_seq += 1;
        self.published.store(st.next_seq, Ordering::Release);
        while st.ring.len() > capacity {
            let old = st.ring.pop_front().expect("ring is not empty");
            st.first_seq += 1;
            st.floor.0[old.partition] = st.floor.0[old.partition].max(old.offset);
        }
        drop(guard);
        self.seq_tx.send_replace(seq + 1);
    }

    /// Ingest every record of a stream (Kafka or the in-process bus) until it ends.
    pub async fn feed(self: &Arc<Self>, records: impl Stream<Item = Record>) {
        let mut records = std::pin::pin!(records);
        while let Some(rec) = records.next().await {
            self.ingest(&rec);
        }
    }

    /// Register a client, or `None` when `max_clients` are already connected.
    pub fn admit(self: &Arc<Self>, kill: Option<Arc<Notify>>) -> Option<ClientGuard> {
        let mut clients = self.clients.lock().expect("clients lock");
        if clients.len() >= self.opts.max_clients as usize {
            return None;
        }
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(ClientSlot { pos: AtomicU64::new(u64::MAX), dropped: AtomicBool::new(false), kill });
        clients.insert(id, slot.clone());
        self.metrics.clients.inc();
        Some(ClientGuard { hub: self.clone(), id, slot })
    }

    /// Where a client starts: live, or after `resume` (`Some(None)`: an id we cannot read).
    pub fn subscribe(&self, resume: Option<Option<Cursor>>) -> Subscription {
        let st = self.state.read().expect("hub lock");
        let latest = st.latest.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let live = Subscription { next_seq: st.next_seq, floor: None, current: st.cursor.clone(), latest, gap: false };
        match resume {
            None => live,
            Some(None) => Subscription { gap: true, ..live },
            // Every partition must be covered: the client saw at least up to what we can no longer replay.
            Some(Some(c)) if !(0..st.floor.0.len()).all(|p| c.get(p) >= st.floor.get(p)) => {
                Subscription { gap: true, ..live }
            }
            Some(Some(c)) => {
                // Per partition the missed events are a suffix of the ring; start at the earliest.
                let next_seq = st.ring.iter().find(|e| e.offset > c.get(e.partition)).map_or(st.next_seq, |e| e.seq);
                Subscription { next_seq, floor: Some(c), ..live }
            }
        }
    }

    /// Copy up to `max` events from `from` into `out`; the new read position, or [`Lagged`] when the client
    /// is further behind than its bound (or than the ring).
    pub fn read(&self, from: u64, max: usize, out: &mut VecDeque<Arc<Event>>) -> Result<u64, Lagged> {
        let st = self.state.read().expect("hub lock");
        if from < st.first_seq || st.next_seq.saturating_sub(from) > self.opts.client_queue {
            return Err(Lagged);
        }
        let start = (from - st.first_seq) as usize;
        let end = st.ring.len().min(start + max);
        out.extend(st.ring.range(start..end).cloned());
        Ok(st.first_seq + end as u64)
    }

    /// The seq the next event will get: every event below it can be read.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// A receiver that changes whenever events are appended, a heartbeat is published or the hub shuts down.
    pub fn watch_seq(&self) -> watch::Receiver<u64> {
        self.seq_tx.subscribe()
    }

    /// The generation of the latest heartbeat (start a client's [`Hub::heartbeat_since`] from it).
    pub fn heartbeat_generation(&self) -> u64 {
        self.heartbeat_gen.load(Ordering::Acquire)
    }

    /// The latest heartbeat frame when it is newer than `seen` (which it then updates).
    pub fn heartbeat_since(&self, seen: &mut u64) -> Option<Bytes> {
        let now = self.heartbeat_gen.load(Ordering::Acquire);
        if now == *seen {
            return None;
        }
        *seen = now;
        Some(self.heartbeat.read().expect("heartbeat lock").clone())
    }

    /// Whether the hub is shutting down.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// A receiver that turns true when the gateway shuts down.
    pub fn watch_shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Tell every client to reconnect elsewhere and end their streams.
    pub fn shutdown(&self) {
        self.down.store(true, Ordering::Release);
        self.shutdown_tx.send_replace(true);
        self.seq_tx.send_modify(|_| {});
    }

    fn drop_slot(&self, slot: &ClientSlot) {
        if !slot.dropped.swap(true, Ordering::Relaxed) {
            self.metrics.dropped("slow");
            if let Some(kill) = &slot.kill {
                kill.notify_one();
            }
        }
    }

    /// Disconnect every client further behind than its bound. A client whose socket is full is never
    /// polled, so it cannot notice by itself; this closes its connection.
    pub fn sweep_slow(&self) -> usize {
        let head = self.state.read().expect("hub lock").next_seq;
        let slow: Vec<_> = {
            let clients = self.clients.lock().expect("clients lock");
            clients
                .values()
                .filter(|s| {
                    let pos = s.pos.load(Ordering::Relaxed);
                    pos != u64::MAX && head.saturating_sub(pos) > self.opts.client_queue
                })
                .cloned()
                .collect()
        };
        for s in &slow {
            self.drop_slot(s);
        }
        slow.len()
    }

    /// Publish a heartbeat frame carrying the hub's statistics.
    pub fn beat(&self) {
        let frame = format!(
            "data: {{\"type\":\"heartbeat\",\"data\":{}}}\n\n",
            serde_json::to_string(&self.stats()).expect("stats serialise")
        );
        *self.heartbeat.write().expect("heartbeat lock") = Bytes::from(frame);
        self.heartbeat_gen.fetch_add(1, Ordering::AcqRel);
        self.seq_tx.send_modify(|_| {});
    }

    /// Counters for `/stats` and heartbeats.
    pub fn stats(&self) -> Stats {
        let (buffered, cursor) = {
            let st = self.state.read().expect("hub lock");
            (st.ring.len(), st.cursor.to_string())
        };
        Stats {
            clients: self.client_count(),
            events_received: self.metrics.events_received.get(),
            deliveries: self.metrics.deliveries.get(),
            dropped: self.metrics.dropped_total(),
            rejected: self.metrics.rejected_total(),
            invalid_records: self.invalid_records(),
            buffered,
            cursor,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    /// Run the heartbeat and slow-client sweep until shutdown.
    pub async fn housekeeping(self: Arc<Self>) {
        let mut beat = tokio::time::interval(self.opts.heartbeat);
        let mut sweep = tokio::time::interval(Duration::from_millis(200));
        let mut down = self.watch_shutdown();
        loop {
            tokio::select! {
                _ = beat.tick() => self.beat(),
                _ = sweep.tick() => {
                    let n = self.sweep_slow();
                    if n > 0 {
                        tracing::info!(clients = n, "disconnected clients that fell behind");
                    }
                }
                _ = down.changed() => return,
            }
        }
    }
}

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    /// A hub with the given replay buffer and client bound (shared with the tests of the hub's readers).
    pub(crate) fn hub(replay: usize, queue: u64) -> Arc<Hub> {
        let opts = HubOptions {
            replay_buffer: replay,
            client_queue: queue,
            heartbeat: Duration::from_secs(15),
            retry_ms: 1000,
            max_clients: 10,
        };
        Hub::new(opts, Arc::new(Metrics::new(&mut Registry::default())))
    }

    /// A tick record at `offset` on partition `p`.
    pub(crate) fn rec(p: i32, offset: i64, symbol: &str) -> Record {
        let json = format!(
            r#"{{"type":"tick","v":1,"source":"synthetic","symbol":"{symbol}","quote":"USD","price":"{offset}.5",
            "exchange_time":"2024-01-01T00:00:00Z","received_at":"2024-01-01T00:00:00Z"}}"#
        );
        Record { topic: "t".into(), partition: p, offset, key: None, payload: Bytes::from(json), timestamp_ms: 0 }
    }

    #[tokio::test]
    async fn one_channel_wakes_clients_for_events_heartbeats_and_shutdown() {
        let h = hub(100, 100);
        h.start_partitions(&[(0, 0)]);
        let mut rx = h.watch_seq();
        let mut seen = h.heartbeat_generation();
        assert_eq!(h.heartbeat_since(&mut seen), None, "a new client gets no old heartbeat");
        let woken =
            |rx: &mut watch::Receiver<u64>| futures::FutureExt::now_or_never(rx.changed()).is_some_and(|r| r.is_ok());
        assert!(!woken(&mut rx));
        h.ingest(&rec(0, 0, "BTC"));
        assert!(woken(&mut rx), "an event wakes");
        h.beat();
        assert!(woken(&mut rx), "a heartbeat wakes");
        let beat = h.heartbeat_since(&mut seen).expect("the new heartbeat");
        assert!(beat.starts_with(b"data: {\"type\":\"heartbeat\""));
        assert_eq!(h.heartbeat_since(&mut seen), None, "once");
        assert!(!h.is_down());
        h.shutdown();
        assert!(woken(&mut rx) && h.is_down(), "shutdown wakes");
    }

    #[test]
    fn cursors_round_trip_and_compare() {
        let c = Cursor::parse("0:12,2:7").unwrap();
        assert_eq!(c, Cursor(vec![12, -1, 7]));
        assert_eq!(c.to_string(), "0:12,1:-1,2:7");
        assert!(Cursor::parse("garbage").is_none());
        assert!(Cursor::parse("99999999:1").is_none());
        assert!(Cursor(vec![12, 0, 7]).dominates(&c));
        assert!(!Cursor(vec![13]).dominates(&c));
        assert_eq!(Cursor(vec![13]).max(&c), Cursor(vec![13, -1, 7]));
    }

    #[test]
    fn resume_starts_at_the_first_missed_event_of_any_partition() {
        let h = hub(100, 100);
        h.start_partitions(&[(0, 0), (1, 0)]);
        for (p, o) in [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)] {
            h.ingest(&rec(p, o, "BTC"));
        }
        // Seen p0 up to 1 and p1 up to 0: the first missed is p1:1 (seq 3), then p0:2 is missed too.
        let sub = h.subscribe(Some(Cursor::parse("0:1,1:0")));
        assert!(!sub.gap);
        assert_eq!(sub.next_seq, 3);
        let mut out = VecDeque::new();
        h.read(sub.next_seq, 10, &mut out).unwrap();
        let floor = sub.floor.unwrap();
        let missed: Vec<_> =
            out.iter().filter(|e| e.offset > floor.get(e.partition)).map(|e| (e.partition, e.offset)).collect();
        assert_eq!(missed, vec![(1, 1), (0, 2)]);
        assert_eq!(std::str::from_utf8(&out.back().unwrap().frame).unwrap().lines().next(), Some("id: 0:2,1:1"));
    }

    #[test]
    fn eviction_raises_the_floor_and_old_cursors_get_a_gap() {
        let h = hub(3, 3);
        h.start_partitions(&[(0, 0)]);
        for o in 0..10 {
            h.ingest(&rec(0, o, "BTC"));
        }
        assert!(h.subscribe(Some(Cursor::parse("0:5"))).gap);
        assert!(!h.subscribe(Some(Cursor::parse("0:6"))).gap);
        assert!(h.subscribe(Some(None)).gap);
        assert_eq!(h.read(0, 10, &mut VecDeque::new()), Err(Lagged));
    }

    #[test]
    fn slow_clients_are_swept_once_and_counted() {
        let h = hub(10, 2);
        h.start_partitions(&[(0, 0)]);
        let kill = Arc::new(Notify::new());
        let g = h.admit(Some(kill.clone())).unwrap();
        let sub = h.subscribe(None);
        g.slot.stalled_at(Some(sub.next_seq));
        for o in 0..5 {
            h.ingest(&rec(0, o, "ETH"));
        }
        assert_eq!(h.sweep_slow(), 1);
        h.sweep_slow();
        assert_eq!(h.metrics.dropped_total(), 1);
        drop(g);
        assert_eq!(h.client_count(), 0);
    }
}
