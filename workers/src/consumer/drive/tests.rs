//! The loop over a scripted transport and a database that fails on request: what is committed, when, and in
//! which order, without Kafka or PostgreSQL.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoviz_runtime::health::Health;
use prometheus_client::registry::Registry;

use super::super::batch::{Batch, Entry, Row, TickColumns, TradeColumns};
use super::super::flush::Flusher;
use super::super::metrics::{Metrics, TableLabels};
use super::super::sink::{SinkError, Store, Written};
use super::super::transport::{Commit, FlushError, Transport};
use super::{Limits, drive};

const TICK: &str = r#"{"type":"tick","v":1,"source":"kraken","symbol":"BTC","quote":"USD","price":"67187.3","exchange_time":"2024-03-25T08:45:00.123Z","received_at":"2024-03-25T08:45:00.200Z"}"#;

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Stored(usize),
    WriteFailed,
    Paused(bool),
    DeadLetter(Vec<i64>),
    Committed(BTreeMap<i32, i64>, Commit),
}

type Log = Arc<Mutex<Vec<Event>>>;

fn entry(partition: i32, offset: i64, payload: &str) -> Entry {
    Entry::read(partition, offset, None, None, payload.into())
}

/// A database that refuses the next `fail` writes, as a database that is down does.
struct FakeStore {
    fail: AtomicU32,
    log: Log,
}

impl Store for FakeStore {
    async fn write(&self, ticks: &TickColumns<'_>, trades: &TradeColumns<'_>) -> Result<Written, SinkError> {
        if self.fail.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            self.log.lock().unwrap().push(Event::WriteFailed);
            return Err(SinkError::Timeout(Duration::from_secs(1)));
        }
        self.log.lock().unwrap().push(Event::Stored(ticks.len() + trades.len()));
        Ok(Written { ticks: ticks.len() as u64, trades: trades.len() as u64 })
    }

    async fn ping(&self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn close(&self) {}
}

/// Records from a script; stops the loop once every scripted record is committed (or after a deadline, which
/// the assertions then catch).
struct Script {
    records: Mutex<VecDeque<Entry>>,
    rest: Mutex<Vec<Entry>>,
    want: BTreeMap<i32, i64>,
    committed: Mutex<BTreeMap<i32, i64>>,
    paused: AtomicBool,
    stop: Arc<AtomicBool>,
    deadline: Instant,
    log: Log,
}

impl Transport for Script {
    fn poll(&self, timeout: Duration) -> Option<Entry> {
        if *self.committed.lock().unwrap() == self.want || Instant::now() > self.deadline {
            self.stop.store(true, Ordering::SeqCst);
        }
        if self.paused.load(Ordering::SeqCst) {
            // A paused partition delivers nothing; the wait is the poll's own.
            std::thread::park_timeout(timeout);
            return None;
        }
        self.records.lock().unwrap().pop_front()
    }

    fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        self.log.lock().unwrap().push(Event::Paused(paused));
    }

    fn commit(&self, next: &BTreeMap<i32, i64>, mode: Commit) -> Result<(), FlushError> {
        self.committed.lock().unwrap().extend(next);
        self.log.lock().unwrap().push(Event::Committed(next.clone(), mode));
        Ok(())
    }

    fn dead_letter(&self, batch: &Batch, _: &Metrics) -> Result<(), FlushError> {
        let offsets: Vec<i64> =
            batch.entries().iter().filter(|e| matches!(e.row, Row::Rejected(_))).map(|e| e.offset).collect();
        if !offsets.is_empty() {
            self.log.lock().unwrap().push(Event::DeadLetter(offsets));
        }
        Ok(())
    }

    fn drain(&self) -> Vec<Entry> {
        std::mem::take(&mut self.rest.lock().unwrap())
    }
}

struct Run {
    log: Vec<Event>,
    committed: BTreeMap<i32, i64>,
    ready: bool,
}

fn run(records: Vec<Entry>, rest: Vec<Entry>, failures: u32, stop_at_once: bool) -> Run {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let log = Log::default();
    let mut want = BTreeMap::new();
    for e in records.iter().chain(&rest) {
        want.insert(e.partition, e.offset + 1);
    }
    let stop = Arc::new(AtomicBool::new(stop_at_once));
    let t = Script {
        records: Mutex::new(records.into()),
        rest: Mutex::new(rest),
        want,
        committed: Mutex::default(),
        paused: AtomicBool::new(false),
        stop: stop.clone(),
        deadline: Instant::now() + Duration::from_secs(20),
        log: log.clone(),
    };
    let sink = Arc::new(FakeStore { fail: AtomicU32::new(failures), log: log.clone() });
    let f = Flusher::new(rt.handle().clone(), sink, Metrics::new(&mut Registry::default()), Health::new(), true);
    drive(&t, &f, &stop, Limits { batch_size: 2, interval: Duration::from_millis(20) });
    let ready = f.health.ready.load(Ordering::SeqCst);
    let committed = t.committed.lock().unwrap().clone();
    let log = log.lock().unwrap().clone();
    Run { log, committed, ready }
}

fn position(log: &[Event], pred: impl Fn(&Event) -> bool) -> usize {
    log.iter().position(pred).unwrap_or_else(|| panic!("no such event in {log:?}"))
}

#[test]
fn every_record_is_committed_after_it_is_stored_or_dead_lettered() {
    let records = vec![entry(0, 10, TICK), entry(1, 4, TICK), entry(0, 11, "garbage"), entry(1, 5, TICK)];
    let r = run(records, vec![], 0, false);
    assert_eq!(r.committed, BTreeMap::from([(0, 12), (1, 6)]), "{:?}", r.log);
    let stored: usize = r.log.iter().map(|e| if let Event::Stored(n) = e { *n } else { 0 }).sum();
    assert_eq!(stored, 3, "three ticks stored, the garbage dead-lettered: {:?}", r.log);
    let dl = position(&r.log, |e| *e == Event::DeadLetter(vec![11]));
    let commit_11 = position(&r.log, |e| matches!(e, Event::Committed(m, _) if m.get(&0) == Some(&12)));
    assert!(dl < commit_11, "dead letter before its offset is committed: {:?}", r.log);
    assert!(!r.log.iter().any(|e| matches!(e, Event::Paused(_))), "{:?}", r.log);
    assert!(!r.ready, "not ready once stopped");
}

#[test]
fn a_failing_database_pauses_until_the_batch_is_stored_and_commits_nothing_before() {
    let records = (0..6).map(|i| entry(0, i, TICK)).collect();
    let r = run(records, vec![], 3, false);
    assert_eq!(r.committed, BTreeMap::from([(0, 6)]), "{:?}", r.log);
    let first_fail = position(&r.log, |e| *e == Event::WriteFailed);
    let pause = position(&r.log, |e| *e == Event::Paused(true));
    let resume = position(&r.log, |e| *e == Event::Paused(false));
    assert!(first_fail < pause && pause < resume, "{:?}", r.log);
    assert_eq!(r.log.iter().filter(|e| **e == Event::Paused(true)).count(), 1, "paused once: {:?}", r.log);
    assert_eq!(r.log.iter().filter(|e| **e == Event::WriteFailed).count(), 3, "{:?}", r.log);
    let stored_after_resume = r.log[..resume].iter().rposition(|e| matches!(e, Event::Stored(_))).unwrap();
    assert!(stored_after_resume > first_fail, "resumed only after the failed batch was stored: {:?}", r.log);
    let first_commit = position(&r.log, |e| matches!(e, Event::Committed(..)));
    assert!(first_commit > stored_after_resume, "nothing committed before the batch was stored: {:?}", r.log);
    let stored: usize = r.log.iter().map(|e| if let Event::Stored(n) = e { *n } else { 0 }).sum();
    assert_eq!(stored, 6, "each record stored once: {:?}", r.log);
}

#[test]
fn stopping_stores_the_pending_and_the_undelivered_records_and_commits_synchronously() {
    let rest = vec![entry(0, 1, TICK), entry(0, 2, TICK), entry(2, 9, TICK)];
    let r = run(vec![], rest, 0, true);
    assert_eq!(r.log, vec![Event::Stored(3), Event::Committed(BTreeMap::from([(0, 3), (2, 10)]), Commit::Sync)]);
}

#[test]
fn a_final_flush_that_fails_commits_nothing() {
    let r = run(vec![], vec![entry(0, 1, TICK)], 1, true);
    assert_eq!(r.log, vec![Event::WriteFailed]);
    assert!(r.committed.is_empty());
}

/// A data exception as PostgreSQL reports one (SQLSTATE 22003, numeric value out of range).
#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("value out of range")
    }
}

impl std::error::Error for Refused {}

impl sqlx::error::DatabaseError for Refused {
    fn message(&self) -> &str {
        "value out of range"
    }
    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some("22003".into())
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}

/// A database with a primary key on the tick's exchange time that refuses, in one transaction, every batch
/// holding a tick priced `666`: what it stores and what it reports, as PostgreSQL does.
#[derive(Default)]
struct Keyed {
    stored: Mutex<std::collections::BTreeSet<chrono::DateTime<chrono::Utc>>>,
}

impl Store for Keyed {
    async fn write(&self, ticks: &TickColumns<'_>, _: &TradeColumns<'_>) -> Result<Written, SinkError> {
        if ticks.price.contains(&"666") {
            return Err(SinkError::Sql(sqlx::Error::Database(Box::new(Refused))));
        }
        let mut stored = self.stored.lock().unwrap();
        let inserted = ticks.time.iter().filter(|t| stored.insert(**t)).count();
        Ok(Written { ticks: inserted as u64, trades: 0 })
    }

    async fn ping(&self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn close(&self) {}
}

fn tick_at(offset: i64, ms: u32, price: &str) -> Entry {
    let payload = TICK.replace("67187.3", price).replace("08:45:00.123Z", &format!("08:45:00.{ms:03}Z"));
    entry(0, offset, &payload)
}

#[test]
fn a_refused_batch_counts_each_row_once_as_written_or_duplicate() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let log = Log::default();
    let t = Script {
        records: Mutex::default(),
        rest: Mutex::default(),
        want: BTreeMap::new(),
        committed: Mutex::default(),
        paused: AtomicBool::new(false),
        stop: Arc::new(AtomicBool::new(false)),
        deadline: Instant::now(),
        log: log.clone(),
    };
    let sink = Arc::new(Keyed::default());
    let f =
        Flusher::new(rt.handle().clone(), sink.clone(), Metrics::new(&mut Registry::default()), Health::new(), true);
    // One stored earlier (a re-delivery now), two new, one the database refuses, one repeated in the batch.
    let Row::Tick(earlier) = tick_at(0, 1, "1").row else { unreachable!() };
    sink.stored.lock().unwrap().insert(earlier.exchange_time);
    let mut b = Batch::default();
    for e in [tick_at(0, 1, "1"), tick_at(1, 2, "2"), tick_at(2, 3, "666"), tick_at(3, 4, "4"), tick_at(4, 4, "4")] {
        b.push(e);
    }
    f.flush(&t, &mut b).unwrap();
    let count = |family: &prometheus_client::metrics::family::Family<
        TableLabels,
        prometheus_client::metrics::counter::Counter,
    >| { family.get_or_create(&TableLabels { table: "ticks" }).get() };
    assert_eq!(count(&f.metrics.rows_written), 2, "the two new rows, stored one by one");
    assert_eq!(count(&f.metrics.rows_duplicate), 2, "the re-delivery and the repeat");
    assert_eq!(sink.stored.lock().unwrap().len(), 3);
    let log = log.lock().unwrap().clone();
    assert!(log.contains(&Event::DeadLetter(vec![2])), "{log:?}");
    assert!(log.contains(&Event::Committed(BTreeMap::from([(0, 5)]), Commit::Sync)), "{log:?}");
}
