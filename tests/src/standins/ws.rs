//! A scripted WebSocket server: connection *n* plays script *n* (the last script repeats for later
//! connections). Steps send frames, ping, wait for the client's messages, drop the TCP connection
//! mid-stream, or fall silent. Everything the client sends is recorded.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// One step of a connection's script.
#[derive(Clone, Debug)]
pub enum Step {
    /// Send a text frame.
    Send(String),
    /// Send a ping and wait (up to 10 s) for the client's pong.
    PingAwaitPong,
    /// Wait until the client has sent this many text frames on this connection (subscriptions).
    AwaitTexts(usize),
    /// Drop the TCP connection without a close handshake (a crash or network cut mid-stream).
    Disconnect,
    /// Send a close frame and end.
    Close,
    /// Send this frame every interval until the client goes away (heartbeats).
    Every(Duration, String),
}

/// Send each frame of a list.
pub fn send_all(frames: impl IntoIterator<Item = String>) -> Vec<Step> {
    frames.into_iter().map(Step::Send).collect()
}

#[derive(Default)]
struct Shared {
    scripts: Mutex<VecDeque<Vec<Step>>>,
    last: Mutex<Vec<Step>>,
    received: Mutex<Vec<(usize, String)>>,
    paths: Mutex<Vec<String>>,
    connections: AtomicUsize,
    pongs: AtomicUsize,
}

/// A running WebSocket stand-in; stops accepting when dropped.
pub struct WsStandIn {
    /// Bound address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl WsStandIn {
    /// Serve one script per connection. After the scripts run out (or when a script ends without
    /// disconnecting), the connection stays open and silent until the client leaves.
    pub async fn start(scripts: Vec<Vec<Step>>) -> Self {
        let shared = Arc::new(Shared { scripts: Mutex::new(scripts.into()), ..Shared::default() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind stand-in");
        let addr = listener.local_addr().expect("local addr");
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move { connection(s, tcp).await });
            }
        });
        WsStandIn { addr, shared, task }
    }

    /// Base URL (`ws://127.0.0.1:port`).
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Pongs received so far.
    pub fn pongs(&self) -> usize {
        self.shared.pongs.load(Ordering::SeqCst)
    }

    /// Text frames the clients sent, with the connection number (1-based).
    pub fn received(&self) -> Vec<(usize, String)> {
        self.shared.received.lock().expect("lock").clone()
    }

    /// Request paths (with query) of each connection.
    pub fn paths(&self) -> Vec<String> {
        self.shared.paths.lock().expect("lock").clone()
    }
}

impl Drop for WsStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Read one client message, recording it. None when the client went away.
async fn read_one(shared: &Shared, n: usize, ws: &mut WebSocketStream<TcpStream>) -> Option<()> {
    match ws.next().await? {
        Ok(Message::Text(t)) => shared.received.lock().expect("lock").push((n, t.to_string())),
        Ok(Message::Pong(_)) => {
            shared.pongs.fetch_add(1, Ordering::SeqCst);
        }
        Ok(Message::Close(_)) | Err(_) => return None,
        Ok(_) => {}
    }
    Some(())
}

// The handshake callback's error type is tungstenite's, a full HTTP response.
#[allow(clippy::result_large_err)]
async fn connection(shared: Arc<Shared>, tcp: TcpStream) {
    let path = Arc::new(Mutex::new(String::new()));
    let p = path.clone();
    let callback = move |req: &Request, resp: Response| {
        *p.lock().expect("lock") = req.uri().to_string();
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else { return };
    shared.paths.lock().expect("lock").push(path.lock().expect("lock").clone());
    let n = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
    let script = {
        let mut scripts = shared.scripts.lock().expect("lock");
        match scripts.pop_front() {
            Some(s) => {
                *shared.last.lock().expect("lock") = s.clone();
                s
            }
            None => shared.last.lock().expect("lock").clone(),
        }
    };
    for step in script {
        match step {
            Step::Send(text) => {
                if ws.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
            Step::PingAwaitPong => {
                let before = shared.pongs.load(Ordering::SeqCst);
                if ws.send(Message::Ping(b"standin".to_vec().into())).await.is_err() {
                    return;
                }
                let waited = tokio::time::timeout(Duration::from_secs(10), async {
                    while shared.pongs.load(Ordering::SeqCst) == before {
                        read_one(&shared, n, &mut ws).await?;
                    }
                    Some(())
                })
                .await;
                if !matches!(waited, Ok(Some(()))) {
                    return;
                }
            }
            Step::AwaitTexts(count) => {
                let mine = |s: &Shared| s.received.lock().expect("lock").iter().filter(|(c, _)| *c == n).count();
                while mine(&shared) < count {
                    if read_one(&shared, n, &mut ws).await.is_none() {
                        return;
                    }
                }
            }
            Step::Disconnect => {
                // Dropping the stream closes the socket with no close frame.
                drop(ws);
                return;
            }
            Step::Close => {
                let _ = ws.close(None).await;
                return;
            }
            Step::Every(interval, text) => loop {
                tokio::select! {
                    r = read_one(&shared, n, &mut ws) => if r.is_none() { return },
                    _ = tokio::time::sleep(interval) => {
                        if ws.send(Message::text(text.clone())).await.is_err() {
                            return;
                        }
                    }
                }
            },
        }
    }
    // Script done: stay open and silent, recording what the client sends, until it leaves.
    while read_one(&shared, n, &mut ws).await.is_some() {}
}
