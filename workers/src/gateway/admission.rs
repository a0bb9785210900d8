//! The connected clients as the hub tracks them: admission up to `max_clients`, and the slow-client sweep.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::delivery;
use super::metrics::Metrics;

/// A connected client as the hub tracks it (for the slow-client sweep and `/stats`).
pub struct ClientSlot {
    /// While the client's socket is full: the seq of the next event it will be sent, which the sweep
    /// measures its lag by. `u64::MAX` while it is written to on every event (it cannot fall behind then,
    /// and its writer does not touch this shared line per event).
    pos: AtomicU64,
    dropped: AtomicBool,
    kill: Option<Arc<Notify>>,
}

impl ClientSlot {
    /// The client's socket is full at `next` (`Some`), or draining again (`None`).
    pub fn stalled_at(&self, next: Option<u64>) {
        self.pos.store(next.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Where the client's socket filled up, while it is full.
    fn stalled(&self) -> Option<u64> {
        let pos = self.pos.load(Ordering::Relaxed);
        (pos != u64::MAX).then_some(pos)
    }
}

/// Every connected client, by id.
pub struct Clients {
    slots: Mutex<HashMap<u64, Arc<ClientSlot>>>,
    next_id: AtomicU64,
    max: u32,
    metrics: Arc<Metrics>,
}

/// Deregisters a client when its stream is dropped.
pub struct ClientGuard {
    clients: Arc<Clients>,
    id: u64,
    /// The slot the hub watches.
    pub slot: Arc<ClientSlot>,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.clients.slots.lock().expect("clients lock").remove(&self.id);
        self.clients.metrics.clients.dec();
    }
}

impl ClientGuard {
    /// Mark this client dropped for being slow (counted once) and close its connection.
    pub fn drop_slow(&self) {
        self.clients.drop_slot(&self.slot);
    }
}

impl Clients {
    /// No clients yet; at most `max` at once.
    pub fn new(max: u32, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Clients { slots: Mutex::new(HashMap::new()), next_id: AtomicU64::new(0), max, metrics })
    }

    /// Register a client (counted in the `clients` gauge until its guard drops), or `None` when `max` are
    /// already connected. `kill` is notified when the client is dropped for being slow.
    pub fn admit(self: &Arc<Self>, kill: Option<Arc<Notify>>) -> Option<ClientGuard> {
        let mut slots = self.slots.lock().expect("clients lock");
        if slots.len() >= self.max as usize {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(ClientSlot { pos: AtomicU64::new(u64::MAX), dropped: AtomicBool::new(false), kill });
        slots.insert(id, slot.clone());
        self.metrics.clients.inc();
        Some(ClientGuard { clients: self.clone(), id, slot })
    }

    /// Connected clients.
    pub fn count(&self) -> usize {
        self.slots.lock().expect("clients lock").len()
    }

    fn drop_slot(&self, slot: &ClientSlot) {
        if !slot.dropped.swap(true, Ordering::Relaxed) {
            self.metrics.dropped("slow");
            if let Some(kill) = &slot.kill {
                kill.notify_one();
            }
        }
    }

    /// Drop every client whose socket is full while it is more than `bound` events behind `head` (the seq
    /// the next event will get). Returns how many such clients there are, a client already dropped but not
    /// yet gone included; each is counted in `clients_dropped` once.
    pub fn sweep(&self, head: u64, bound: u64) -> usize {
        let slow: Vec<_> = {
            let slots = self.slots.lock().expect("clients lock");
            slots.values().filter(|s| delivery::slow(s.stalled(), head, bound)).cloned().collect()
        };
        for s in &slow {
            self.drop_slot(s);
        }
        slow.len()
    }
}
