//! Writer shards: every `/stream` client's frames written to its socket without a task or an HTTP
//! connection per client.
//!
//! When an event arrives, a shard (one per core) walks its clients and writes each one's new frames with one
//! non-blocking `send`/`writev`: no per-client wake-up, no per-client polling, no chunked framing (the
//! response is delimited by closing the connection). Live clients are written from the shard's own copy of
//! the newest events ([`Recent`]) and counted in the shard's own [`Tally`], so a delivery writes nothing
//! that the other shard reads. A socket that cannot take everything keeps the rest in its client's queue;
//! the client's connection task waits for the socket to drain and wakes the shard for it alone. A client that
//! stays blocked falls behind its bound and is closed by the hub's sweep, as before.
//!
//! Each client's connection task stays for the rare things: noticing the peer closed (EOF), waiting for
//! writability, and the hub's kill notice. It ends when the shard lets go of the client, which closes the
//! socket.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::{Buf, Bytes};
use smallvec::SmallVec;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot};

use super::delivery::{self, Sent};
use super::event::Event;
use super::hub::Hub;
use super::metrics::Tally;
use super::recent::Recent;
use super::sse::{Conn, Fill};

/// Frames given to one `writev` at most.
const IOVECS: usize = 64;

/// What a client's connection task tells its shard.
enum Ctl {
    /// A new client, with the response head and greeting queued.
    Add(Box<Client>),
    /// The client's socket can take more.
    Writable(u64),
    /// The peer closed, or the hub dropped the client: close the socket.
    Close(u64),
}

/// One client as its shard holds it.
struct Client {
    id: u64,
    stream: Arc<TcpStream>,
    conn: Conn,
    /// Frames not yet written; the first may be partly written (already advanced past what was sent).
    queue: VecDeque<Bytes>,
    /// Waiting for the socket to drain: the shard does not write to it until woken.
    blocked: bool,
    /// Tells the connection task to wait for writability.
    wait_writable: Arc<Notify>,
    /// Dropped with the client: the connection task ends and the socket is closed.
    _gone: oneshot::Sender<()>,
}

/// The writer shards.
pub struct Fanout {
    shards: Vec<mpsc::UnboundedSender<Ctl>>,
    next_shard: AtomicUsize,
    next_id: AtomicU64,
}

impl Fanout {
    /// One shard per core, each on a thread of its own: a burst is written by every core at once, whatever
    /// else the runtime's workers are doing. A shard stops when the `Fanout` is dropped, closing its clients.
    pub fn start(hub: Arc<Hub>) -> std::io::Result<Arc<Self>> {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut shards = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            let rt = tokio::runtime::Builder::new_current_thread().build()?;
            let hub = hub.clone();
            std::thread::Builder::new()
                .name(format!("gateway-shard-{i}"))
                .spawn(move || rt.block_on(shard(hub, rx)))?;
            shards.push(tx);
        }
        Ok(Arc::new(Fanout { shards, next_shard: AtomicUsize::new(0), next_id: AtomicU64::new(0) }))
    }

    /// Stream `conn` on `stream`, after `head` (the response head), until the stream ends, the peer closes
    /// or `kill` is notified. Returns when the socket has been let go of.
    pub async fn run(&self, stream: TcpStream, head: Bytes, conn: Conn, kill: Arc<Notify>) {
        let shard = &self.shards[self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len()];
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stream = Arc::new(stream);
        let (gone_tx, mut gone) = oneshot::channel();
        let wait_writable = Arc::new(Notify::new());
        let client = Client {
            id,
            stream: stream.clone(),
            conn,
            queue: VecDeque::from([head]),
            blocked: false,
            wait_writable: wait_writable.clone(),
            _gone: gone_tx,
        };
        if shard.send(Ctl::Add(Box::new(client))).is_err() {
            return;
        }
        // The client sends nothing after its request; anything it does send is read and ignored, so that
        // closing the socket never turns into a reset that discards the last frames.
        let mut scratch = [0u8; 256];
        let mut waiting = false;
        loop {
            tokio::select! {
                _ = &mut gone => return,
                _ = kill.notified() => {
                    let _ = shard.send(Ctl::Close(id));
                    let _ = gone.await;
                    return;
                }
                _ = wait_writable.notified() => waiting = true,
                r = stream.writable(), if waiting => {
                    waiting = false;
                    if r.is_err() || shard.send(Ctl::Writable(id)).is_err() {
                        return;
                    }
                }
                r = stream.readable() => {
                    let eof = match r.map(|()| stream.try_read(&mut scratch)) {
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => false,
                        Ok(Ok(n)) => n == 0,
                        _ => true,
                    };
                    if eof {
                        let _ = shard.send(Ctl::Close(id));
                        return;
                    }
                }
            }
        }
    }
}

/// What writing to a client came to.
enum Pumped {
    /// Everything due is written.
    Idle,
    /// The socket is full; the rest is queued.
    Blocked,
    /// The stream is over or the socket failed: drop the client.
    Done,
}

/// Write the client's queued and new frames until it is up to date, its socket is full or its stream ends.
///
/// A live client with nothing queued is written straight from `recent`'s frames (borrowed, not cloned), with
/// the socket's own `send` (`writev` for several) rather than through the runtime's readiness bookkeeping,
/// which would touch one more cold cache line per client per event. Only what the socket does not take is
/// queued, and the queue is written through the runtime, so that a full socket is recorded and its
/// connection task can wait.
fn pump(c: &mut Client, recent: &Recent, now_ms: i64, tally: &mut Tally) -> Pumped {
    let mut ended = false;
    loop {
        if c.queue.is_empty() {
            // Inline storage, left uninitialised: a client is usually due one or two events.
            let mut due: SmallVec<[&Event; 4]> = SmallVec::new();
            let live = c.conn.due(recent, now_ms, tally, |ev| due.push(ev));
            if live {
                if due.is_empty() {
                    return Pumped::Idle;
                }
                let sock = SockRef::from(&*c.stream);
                let (sent, total) = if let [ev] = due[..] {
                    // The usual case, one event: `send` spares the kernel the message header and iovec copy.
                    (sock.send(&ev.frame), ev.frame.len())
                } else {
                    let slices: SmallVec<[IoSlice; 4]> = due.iter().map(|ev| IoSlice::new(&ev.frame)).collect();
                    (sock.send_vectored(&slices), slices.iter().map(|s| s.len()).sum())
                };
                let n = match delivery::sent(sent.map_err(|e| e.kind()), total) {
                    Sent::All => return Pumped::Idle,
                    Sent::Part(n) => n,
                    // Nothing written: the frames are queued whole, and the queue write below waits if need be.
                    Sent::Full | Sent::Again => 0,
                    Sent::Failed => return Pumped::Done,
                };
                for (i, written) in delivery::unsent(due.iter().map(|ev| ev.frame.len()), n) {
                    c.queue.push_back(due[i].frame.slice(written..));
                }
                continue;
            }
            if ended {
                return Pumped::Done;
            }
            match c.conn.fill(now_ms, tally, &mut c.queue) {
                Fill::Frames => {}
                Fill::Idle => return Pumped::Idle,
                Fill::End => ended = true,
            }
            if c.queue.is_empty() {
                continue;
            }
        }
        let mut slices = [IoSlice::new(&[]); IOVECS];
        let k = c.queue.len().min(IOVECS);
        for (s, b) in slices.iter_mut().zip(c.queue.iter()) {
            *s = IoSlice::new(b);
        }
        let total = slices[..k].iter().map(|s| s.len()).sum();
        let mut n = match delivery::sent(c.stream.try_write_vectored(&slices[..k]).map_err(|e| e.kind()), total) {
            Sent::All => total,
            Sent::Part(n) => n,
            Sent::Full => {
                c.blocked = true;
                c.conn.stalled(true);
                c.wait_writable.notify_one();
                return Pumped::Blocked;
            }
            Sent::Again => continue,
            Sent::Failed => return Pumped::Done,
        };
        while n > 0 {
            let front = c.queue.front_mut().expect("written bytes come from queued frames");
            if n >= front.len() {
                n -= front.len();
                c.queue.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
        if c.queue.is_empty() && c.conn.caught_up() {
            return Pumped::Idle;
        }
    }
}

/// Milliseconds since the epoch (the hand-off time for latency; cheaper than a calendar time).
fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// One shard: its clients, written to on every change of the hub's sequence (events, heartbeats, shutdown).
async fn shard(hub: Arc<Hub>, mut ctl: mpsc::UnboundedReceiver<Ctl>) {
    let mut seq = hub.watch_seq();
    let mut clients: HashMap<u64, Client> = HashMap::new();
    // At most one `writev`'s worth, so that a live client's events always fit in one.
    let mut recent = Recent::new(&hub, IOVECS);
    let mut tally = Tally::default();
    let mut done = Vec::new();
    loop {
        tokio::select! {
            biased;
            msg = ctl.recv() => match msg {
                None => return,
                Some(Ctl::Add(c)) => {
                    let mut c = *c;
                    recent.refresh(&hub);
                    if !matches!(pump(&mut c, &recent, now_ms(), &mut tally), Pumped::Done) {
                        clients.insert(c.id, c);
                    }
                }
                Some(Ctl::Writable(id)) => {
                    if let Some(c) = clients.get_mut(&id) {
                        c.blocked = false;
                        c.conn.stalled(false);
                        recent.refresh(&hub);
                        if matches!(pump(c, &recent, now_ms(), &mut tally), Pumped::Done) {
                            clients.remove(&id);
                        }
                    }
                }
                Some(Ctl::Close(id)) => {
                    clients.remove(&id);
                }
            },
            changed = seq.changed() => {
                if changed.is_err() {
                    return;
                }
                for c in clients.values_mut() {
                    // Per client, not per pass: an event that arrives mid-pass goes out with this pass.
                    recent.refresh(&hub);
                    if !c.blocked && matches!(pump(c, &recent, now_ms(), &mut tally), Pumped::Done) {
                        done.push(c.id);
                    }
                }
                for id in done.drain(..) {
                    clients.remove(&id);
                }
            }
        }
        hub.metrics.flush(&mut tally);
    }
}
