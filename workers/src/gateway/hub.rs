//! The transport-independent core of the gateway: records in (from Kafka or the in-process bus), one
//! serialised frame per event out to every subscriber.
//!
//! One ring of events serves as both the replay buffer and the fan-out queue: each client holds only a
//! sequence number into it, so a slow client costs nothing to the others, and "falling behind its bound"
//! is a subtraction. Every event carries the hub's cursor after it — the last offset seen on every
//! partition — which becomes the SSE `id:`. A cursor means the same on every replica ("I have everything
//! up to these offsets"), so a client can resume anywhere.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{Notify, watch};

use super::admission::{ClientGuard, Clients, Refused};
use super::cursor::Cursor;
use super::delivery;
use super::event::{self, Event};
use super::limits::Limits;
use super::metrics::Metrics;
use super::payload;
use super::stats::Stats;
use crate::bus::Record;
use crate::message::Message;

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
    /// Connection limits (per address, timeouts, request head).
    pub limits: Limits,
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

/// The fan-out hub: the ring of rendered events every client reads from (and resumes from), the latest
/// heartbeat, the shutdown flag and the registry of connected clients.
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
    /// Admission and the slow-client sweep.
    clients: Arc<Clients>,
    /// Records skipped for not being messages.
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
    /// Why the requested resume point cannot be resumed from, the `reason` of the `reset` the client is sent:
    /// `gap` (older than the buffer), `invalid_id` (unreadable or too long) or `unknown_partition`.
    pub reset: Option<&'static str>,
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
            clients: Clients::new(opts.max_clients, opts.limits.max_per_address, metrics.clone()),
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
        self.clients.count()
    }

    /// Take one record in: render it once, append it to the ring, wake subscribers.
    pub fn ingest(&self, rec: &Record) {
        self.metrics.events_received.inc();
        let p = usize::try_from(rec.partition).unwrap_or(0);
        // Render outside the lock: only the id depends on the hub's state.
        // The same value rules as the consumer's: a record breaking one is never shown.
        let decoded = Message::from_json(&rec.payload)
            .map_err(|e| e.to_string())
            .and_then(|m| m.check(chrono::Utc::now()).map_err(|e| format!("invalid value: {e}")).map(|()| m));
        let rendered = match decoded {
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
        let (frame, body_start) = event::frame(&st.cursor.to_string(), &json);
        let seq = st.next_seq;
        let ev = Event {
            seq,
            partition: p,
            offset: rec.offset,
            symbol,
            kind,
            time_ms: rec.timestamp_ms,
            cursor: st.cursor.clone(),
            frame,
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

    /// Register a client from `address`, unless `max_clients` are already connected or the per-address cap
    /// is reached for it.
    pub fn admit(&self, kill: Option<Arc<Notify>>, address: std::net::IpAddr) -> Result<ClientGuard, Refused> {
        self.clients.admit(kill, address)
    }

    /// Where a client starts: live, or after the event id `resume`. The id is read against the partitions
    /// the hub knows, so a resume point never has more entries than the topic has partitions.
    pub fn subscribe(&self, resume: Option<&str>) -> Subscription {
        let st = self.state.read().expect("hub lock");
        let latest = st.latest.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let live = Subscription { next_seq: st.next_seq, floor: None, current: st.cursor.clone(), latest, reset: None };
        let Some(resume) = resume else { return live };
        match Cursor::parse(resume, st.cursor.0.len()) {
            Err(e) => Subscription { reset: Some(e.reason()), ..live },
            // Every partition must be covered: the client saw at least up to what we can no longer replay.
            Ok(c) if !(0..st.floor.0.len()).all(|p| c.get(p) >= st.floor.get(p)) => {
                Subscription { reset: Some("gap"), ..live }
            }
            Ok(c) => {
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
        if delivery::lagged(from, st.first_seq, st.next_seq, self.opts.client_queue) {
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

    /// Disconnect every client further behind than its bound, or whose socket has stayed full for the idle
    /// timeout. A client whose socket is full is never polled, so it cannot notice by itself; this closes
    /// its connection.
    pub fn sweep_slow(&self) -> usize {
        let head = self.state.read().expect("hub lock").next_seq;
        self.clients.sweep(head, self.opts.client_queue, self.opts.limits.idle_timeout)
    }

    /// Publish a heartbeat frame carrying the hub's statistics.
    pub fn beat(&self) {
        let frame = self.stats().heartbeat_frame();
        *self.heartbeat.write().expect("heartbeat lock") = frame;
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
                        tracing::info!(clients = n, "disconnected clients that fell behind or stopped reading");
                    }
                }
                _ = down.changed() => return,
            }
        }
    }
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
            limits: Limits::default(),
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
    fn resume_starts_at_the_first_missed_event_of_any_partition() {
        let h = hub(100, 100);
        h.start_partitions(&[(0, 0), (1, 0)]);
        for (p, o) in [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)] {
            h.ingest(&rec(p, o, "BTC"));
        }
        // Seen p0 up to 1 and p1 up to 0: the first missed is p1:1 (seq 3), then p0:2 is missed too.
        let sub = h.subscribe(Some("0:1,1:0"));
        assert_eq!(sub.reset, None);
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
        assert_eq!(h.subscribe(Some("0:5")).reset, Some("gap"));
        assert_eq!(h.subscribe(Some("0:6")).reset, None);
        assert_eq!(h.subscribe(Some("nope")).reset, Some("invalid_id"));
        assert_eq!(h.read(0, 10, &mut VecDeque::new()), Err(Lagged));
    }

    #[test]
    fn an_id_naming_a_partition_the_topic_lacks_is_a_reset_and_never_widens_an_id() {
        let h = hub(100, 100);
        h.start_partitions(&[(0, 0), (1, 0)]);
        h.ingest(&rec(0, 0, "BTC"));
        assert_eq!(h.subscribe(Some("0:5,65535:0")).reset, Some("unknown_partition"));
        let sub = h.subscribe(Some("0:0"));
        assert_eq!((sub.reset, sub.floor.clone()), (None, Some(Cursor(vec![0, -1]))), "padded to the known partitions");
        h.ingest(&rec(1, 0, "BTC"));
        let mut out = VecDeque::new();
        h.read(sub.next_seq, 10, &mut out).unwrap();
        let ids: Vec<_> = out.iter().map(|e| e.cursor.max(sub.floor.as_ref().unwrap()).0.len()).collect();
        assert_eq!(ids, vec![2], "every id the client is sent names the topic's partitions only");
    }

    #[test]
    fn slow_clients_are_swept_once_and_counted() {
        let h = hub(10, 2);
        h.start_partitions(&[(0, 0)]);
        let kill = Arc::new(Notify::new());
        let g = h.admit(Some(kill.clone()), std::net::Ipv4Addr::LOCALHOST.into()).unwrap();
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
