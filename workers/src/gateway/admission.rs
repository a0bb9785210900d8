//! The connected clients as the hub tracks them: admission up to `max_clients` (and a cap per client
//! address), and the sweep of clients that fell behind or stopped reading.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::delivery;
use super::metrics::Metrics;

/// A connected client as the hub tracks it (for the slow-client sweep and `/stats`).
pub struct ClientSlot {
    /// While the client's socket is full: the seq of the next event it will be sent, which the sweep
    /// measures its lag by. `u64::MAX` while it is written to on every event (it cannot fall behind then,
    /// and its writer does not touch this shared line per event).
    pos: AtomicU64,
    /// While the client's socket is full: since when, milliseconds after `epoch`.
    since_ms: AtomicU64,
    epoch: Instant,
    dropped: AtomicBool,
    kill: Option<Arc<Notify>>,
}

impl ClientSlot {
    /// The client's socket is full at `next` (`Some`), or draining again (`None`).
    pub fn stalled_at(&self, next: Option<u64>) {
        let was = self.pos.swap(next.unwrap_or(u64::MAX), Ordering::Relaxed);
        if was == u64::MAX && next.is_some() {
            self.since_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// Since when (milliseconds after the epoch) the client's socket has been full, while it is.
    fn stalled_since(&self) -> Option<u64> {
        self.stalled().map(|_| self.since_ms.load(Ordering::Relaxed))
    }

    /// Where the client's socket filled up, while it is full.
    fn stalled(&self) -> Option<u64> {
        let pos = self.pos.load(Ordering::Relaxed);
        (pos != u64::MAX).then_some(pos)
    }
}

#[derive(Default)]
struct Slots {
    by_id: HashMap<u64, Arc<ClientSlot>>,
    per_address: HashMap<IpAddr, u32>,
}

/// Every connected client, by id, and how many there are per client address.
pub struct Clients {
    slots: Mutex<Slots>,
    next_id: AtomicU64,
    max: u32,
    max_per_address: u32,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

/// Why a client was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `max_clients` are connected.
    MaxClients,
    /// The cap per client address is reached for this address.
    PerAddress,
}

/// Deregisters a client when its stream is dropped.
pub struct ClientGuard {
    clients: Arc<Clients>,
    id: u64,
    address: IpAddr,
    /// The slot the hub watches.
    pub slot: Arc<ClientSlot>,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let mut slots = self.clients.slots.lock().expect("clients lock");
        slots.by_id.remove(&self.id);
        if let Some(n) = slots.per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                slots.per_address.remove(&self.address);
            }
        }
        drop(slots);
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
    /// No clients yet; at most `max` at once, and `max_per_address` from one client address.
    pub fn new(max: u32, max_per_address: u32, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Clients {
            slots: Mutex::default(),
            next_id: AtomicU64::new(0),
            max,
            max_per_address,
            epoch: Instant::now(),
            metrics,
        })
    }

    /// Register a client from `address` (counted in the `clients` gauge until its guard drops), unless
    /// `max` are already connected or `max_per_address` from this address. `kill` is notified when the
    /// client is dropped (slow or stalled).
    pub fn admit(self: &Arc<Self>, kill: Option<Arc<Notify>>, address: IpAddr) -> Result<ClientGuard, Refused> {
        let mut slots = self.slots.lock().expect("clients lock");
        if slots.by_id.len() >= self.max as usize {
            return Err(Refused::MaxClients);
        }
        let from_address = slots.per_address.entry(address).or_default();
        if *from_address >= self.max_per_address {
            return Err(Refused::PerAddress);
        }
        *from_address += 1;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(ClientSlot {
            pos: AtomicU64::new(u64::MAX),
            since_ms: AtomicU64::new(0),
            epoch: self.epoch,
            dropped: AtomicBool::new(false),
            kill,
        });
        slots.by_id.insert(id, slot.clone());
        self.metrics.clients.inc();
        Ok(ClientGuard { clients: self.clone(), id, address, slot })
    }

    /// Connected clients.
    pub fn count(&self) -> usize {
        self.slots.lock().expect("clients lock").by_id.len()
    }

    fn drop_slot(&self, slot: &ClientSlot) {
        self.drop_for(slot, "slow");
    }

    fn drop_for(&self, slot: &ClientSlot, reason: &'static str) {
        if !slot.dropped.swap(true, Ordering::Relaxed) {
            self.metrics.dropped(reason);
            if let Some(kill) = &slot.kill {
                kill.notify_one();
            }
        }
    }

    /// Drop every client whose socket is full while it is more than `bound` events behind `head` (the seq
    /// the next event will get; counted as `slow`), or has stayed full for `idle` (it reads nothing, even if
    /// no events flow; counted as `stalled`). Returns how many such clients there are, a client already
    /// dropped but not yet gone included; each is counted in `clients_dropped` once.
    pub fn sweep(&self, head: u64, bound: u64, idle: Duration) -> usize {
        let now = self.epoch.elapsed().as_millis() as u64;
        let idle = idle.as_millis() as u64;
        let (slow, stalled): (Vec<_>, Vec<_>) = {
            let slots = self.slots.lock().expect("clients lock");
            let slow = slots.by_id.values().filter(|s| delivery::slow(s.stalled(), head, bound)).cloned().collect();
            let stalled = slots
                .by_id
                .values()
                .filter(|s| !delivery::slow(s.stalled(), head, bound))
                .filter(|s| delivery::stalled(s.stalled_since(), now, idle))
                .cloned()
                .collect();
            (slow, stalled)
        };
        for s in &slow {
            self.drop_for(s, "slow");
        }
        for s in &stalled {
            self.drop_for(s, "stalled");
        }
        slow.len() + stalled.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn one_address_is_capped_while_others_are_admitted_and_a_leaver_frees_its_slot() {
        let clients = Clients::new(4, 2, Arc::new(Metrics::new(&mut Registry::default())));
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let first = clients.admit(None, a).unwrap();
        let _second = clients.admit(None, a).unwrap();
        assert_eq!(clients.admit(None, a).err(), Some(Refused::PerAddress));
        let _other = clients.admit(None, b).unwrap();
        drop(first);
        let _again = clients.admit(None, a).expect("a slot freed for the address");
        let _fourth = clients.admit(None, b).unwrap();
        assert_eq!(clients.admit(None, "127.0.0.3".parse().unwrap()).err(), Some(Refused::MaxClients));
        assert_eq!(clients.count(), 4);
    }
}
