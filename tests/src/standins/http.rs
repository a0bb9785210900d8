//! A scripted HTTP server: each request gets the next reply; once the script is exhausted the last reply
//! repeats. Every request is recorded (path, query and headers) for assertions.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;

/// One scripted reply.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Reply {
    /// 200 with a JSON body.
    pub fn json(body: impl Into<Vec<u8>>) -> Self {
        Reply { status: 200, headers: vec![("content-type".into(), "application/json".into())], body: body.into() }
    }

    /// A status with a short text body.
    pub fn status(status: u16) -> Self {
        Reply { status, headers: Vec::new(), body: format!("status {status}").into_bytes() }
    }

    /// Add a header (e.g. `Retry-After`).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A request the stand-in received.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// Path and query.
    pub uri: String,
    /// Headers, names lower-case.
    pub headers: HashMap<String, String>,
    /// When it arrived.
    pub at: std::time::Instant,
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    last: Option<Reply>,
    seen: Vec<SeenRequest>,
}

/// A running HTTP stand-in; stops when dropped.
pub struct HttpStandIn {
    /// Bound address.
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpStandIn {
    /// Serve `replies` in order (the last one repeats).
    pub async fn start(replies: Vec<Reply>) -> Self {
        let script = Arc::new(Mutex::new(Script { replies: replies.into(), ..Script::default() }));
        let app = Router::new().fallback(handle).with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind stand-in");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("stand-in server");
        });
        HttpStandIn { addr, script, task }
    }

    /// Base URL (`http://127.0.0.1:port`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.script.lock().expect("script lock").seen.clone()
    }

    /// Replies not yet served.
    pub fn remaining(&self) -> usize {
        self.script.lock().expect("script lock").replies.len()
    }
}

impl Drop for HttpStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(script): State<Arc<Mutex<Script>>>, req: Request) -> Response {
    let mut s = script.lock().expect("script lock");
    s.seen.push(SeenRequest {
        uri: req.uri().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect(),
        at: std::time::Instant::now(),
    });
    let reply = match s.replies.pop_front() {
        Some(r) => {
            s.last = Some(r.clone());
            r
        }
        None => s.last.clone().unwrap_or_else(|| Reply::status(404)),
    };
    let mut resp = Response::new(Body::from(reply.body));
    *resp.status_mut() = StatusCode::from_u16(reply.status).expect("valid status");
    for (k, v) in reply.headers {
        resp.headers_mut()
            .insert(HeaderName::try_from(k).expect("header name"), HeaderValue::try_from(v).expect("header value"));
    }
    resp
}
