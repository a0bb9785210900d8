//! The floor for the SSE gateway benchmark: the gateway's own hub and Kafka tail (same events, same bytes),
//! delivered by the least a server can do: one thread per core, each writing every event straight to its
//! share of the sockets with one non-blocking `write`. No HTTP framework, no task per client, no chunked
//! framing, no filters, no per-client bound (a socket that cannot take a write is closed and counted). What
//! it shows is what the kernel and the load generator cost on this machine for the same deliveries:
//! `tests/bench/sse-load` runs it with `FLOOR=1`, beside the gateway, with the same load generator.
//!
//! `cargo run --release -p cryptoviz-tests --example sse_floor -- --config <worker config> --listen <addr>`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cryptoviz_crds::config::WorkerConfig;
use cryptoviz_runtime::health::Health;
use cryptoviz_workers::gateway::hub::Hub;
use cryptoviz_workers::gateway::metrics::Metrics;
use cryptoviz_workers::gateway::{hub_options, kafka};
use prometheus_client::registry::Registry;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n";

struct Shard {
    sockets: Mutex<Vec<TcpStream>>,
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut config, mut listen) = (None, None);
    while let Some(k) = args.next() {
        let v = args.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--config" => config = Some(v),
            "--listen" => listen = Some(v),
            _ => panic!("unknown argument {k}"),
        }
    }
    let cfg = WorkerConfig::from_yaml(&std::fs::read_to_string(config.expect("--config"))?)?;
    let hub = Hub::new(hub_options(&cfg)?, Arc::new(Metrics::new(&mut Registry::default())));
    let health = Health::new();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let shards: Arc<Vec<Shard>> = Arc::new((0..threads).map(|_| Shard { sockets: Mutex::new(Vec::new()) }).collect());
    let clients = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicU64::new(0));

    // The Kafka tail, as in the gateway.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (tail_hub, tail_health) = (hub.clone(), health.clone());
    std::thread::spawn(move || rt.block_on(kafka::tail(cfg, tail_hub, tail_health)));

    // Writers: on every new event, each writes it to its own sockets.
    for shard in 0..threads {
        let (hub, shards, closed, clients) = (hub.clone(), shards.clone(), closed.clone(), clients.clone());
        std::thread::spawn(move || {
            let mut seq = hub.watch_seq();
            let mut next = *seq.borrow_and_update();
            let mut batch = std::collections::VecDeque::new();
            loop {
                if futures::executor::block_on(seq.changed()).is_err() {
                    return;
                }
                batch.clear();
                match hub.read(next, 1 << 20, &mut batch) {
                    Ok(n) => next = n,
                    Err(_) => next = *seq.borrow_and_update(),
                }
                let mut sockets = shards[shard].sockets.lock().unwrap();
                for ev in &batch {
                    sockets.retain_mut(|s| match s.write(&ev.frame) {
                        Ok(n) if n == ev.frame.len() => true,
                        _ => {
                            closed.fetch_add(1, Ordering::Relaxed);
                            clients.fetch_sub(1, Ordering::Relaxed);
                            false
                        }
                    });
                }
            }
        });
    }

    // Accept: `/stats` answers the load generator's count; anything else joins a shard.
    let listener = TcpListener::bind(listen.expect("--listen"))?;
    let mut n = 0usize;
    for stream in listener.incoming() {
        let Ok(mut s) = stream else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => req.extend_from_slice(&buf[..k]),
            }
        }
        if req.starts_with(b"GET /stats") {
            let body = format!(
                "{{\"clients\":{},\"closed\":{}}}",
                clients.load(Ordering::Relaxed),
                closed.load(Ordering::Relaxed)
            );
            let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            continue;
        }
        let _ = s.set_nodelay(true);
        if s.write_all(HEAD).is_err() || s.set_nonblocking(true).is_err() {
            continue;
        }
        shards[n % threads].sockets.lock().unwrap().push(s);
        clients.fetch_add(1, Ordering::Relaxed);
        n += 1;
    }
    Ok(())
}
