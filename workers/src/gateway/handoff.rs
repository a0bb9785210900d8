//! Taking `GET /stream` off the HTTP server: the accept loop reads a connection's first request head
//! itself; a stream request is answered through the same router (auth, filters, CORS, admission) and, when it
//! admits a client, the socket goes to a writer shard ([`super::fanout`]). Anything else is handed to hyper
//! with the bytes already read put back in front.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, Response, Version};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Headers parsed at most (hyper's own default).
const MAX_HEADERS: usize = 100;

/// How long an error response gets to be written.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection's first request, as read by the accept loop.
pub enum First {
    /// `GET /stream`, as a request for the router.
    Stream(Box<Request<Body>>),
    /// Anything else (or a head we could not parse): these bytes belong to hyper.
    Other(Bytes),
    /// A head longer than the cap: answered 431 ([`refuse_head`]).
    TooLarge,
}

/// Read the first request head, on every connection whatever its path: at most `max_head` bytes, all of it
/// within `timeout` (a head sent a byte at a time is cut off, not waited for). `None` when the peer closed
/// or the time ran out.
pub async fn read_first(stream: &mut TcpStream, max_head: usize, timeout: Duration) -> Option<First> {
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            buf.reserve(1024);
            if stream.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Partial) if buf.len() <= max_head => continue,
                Ok(httparse::Status::Partial) => return Some(Err(())),
                Ok(httparse::Status::Complete(n)) if n > max_head => return Some(Err(())),
                Ok(httparse::Status::Complete(_)) => return Some(Ok(stream_request(&req))),
                Err(_) => return Some(Ok(None)),
            }
        }
    };
    match tokio::time::timeout(timeout, read).await.ok()? {
        None => None,
        Some(Err(())) => Some(First::TooLarge),
        Some(Ok(Some(req))) => Some(First::Stream(Box::new(req))),
        Some(Ok(None)) => Some(First::Other(buf.freeze())),
    }
}

/// Answer a request head over the cap with 431 and close. What the client is still sending is read and
/// dropped for a moment first (a lingering close): closing with unread bytes would reset the connection,
/// and the client could lose the answer.
pub async fn refuse_head(mut stream: TcpStream) {
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream
            .write_all(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// At most this much is read and dropped after a 431.
const LINGER_BYTES: usize = 1 << 20;

/// The request as the router takes it, when it is `GET /stream` (with any query).
fn stream_request(req: &httparse::Request<'_, '_>) -> Option<Request<Body>> {
    let path = req.path?;
    if req.method != Some("GET") || path.split('?').next() != Some("/stream") {
        return None;
    }
    let mut b = Request::builder().method(Method::GET).uri(path).version(if req.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    });
    for h in req.headers.iter() {
        b = b.header(h.name, h.value);
    }
    b.body(Body::empty()).ok()
}

/// The head of a streaming response: its status and headers; the body is delimited by the connection's end.
pub fn stream_head(resp: &Response<Body>) -> Bytes {
    head(resp, None).into()
}

/// A response head with the framing headers of our choosing: `content-length` when `length` is given, and
/// always `connection: close`.
fn head(resp: &Response<Body>, length: Option<usize>) -> Vec<u8> {
    use axum::http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
    let mut head = format!("HTTP/1.1 {}\r\n", resp.status()).into_bytes();
    for (k, v) in resp.headers() {
        // The router's framing describes the empty body it was given, not what this connection sends.
        if k == CONTENT_LENGTH || k == TRANSFER_ENCODING || k == CONNECTION {
            continue;
        }
        head.extend_from_slice(k.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if let Some(n) = length {
        head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    head
}

/// Write a complete (non-streaming) response and close the connection.
pub async fn write_response(mut stream: TcpStream, resp: Response<Body>) {
    let (parts, body) = resp.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 1 << 20).await else { return };
    let mut out = head(&Response::from_parts(parts, Body::empty()), Some(body.len()));
    out.extend_from_slice(&body);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    })
    .await;
}

/// A socket with bytes already read from it put back in front.
pub struct Rewind {
    pre: Bytes,
    io: TcpStream,
}

impl Rewind {
    /// `pre` is read first, then the socket.
    pub fn new(pre: Bytes, io: TcpStream) -> Self {
        Rewind { pre, io }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Option<Request<Body>> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw.as_bytes()).unwrap().is_complete());
        stream_request(&req)
    }

    #[test]
    fn only_get_stream_is_taken_off_the_http_server() {
        let r = parse("GET /stream?symbols=BTC HTTP/1.1\r\nHost: h\r\nLast-Event-ID: 0:5\r\n\r\n").expect("a stream");
        assert_eq!(r.uri().query(), Some("symbols=BTC"));
        assert_eq!(r.headers()["last-event-id"], "0:5");
        assert_eq!(r.version(), Version::HTTP_11);
        for other in ["GET / HTTP/1.1\r\n\r\n", "GET /streams HTTP/1.1\r\n\r\n", "HEAD /stream HTTP/1.1\r\n\r\n"] {
            assert!(parse(other).is_none(), "{other:?}");
        }
    }

    #[test]
    fn heads_carry_our_framing_not_the_routers() {
        let resp = Response::builder()
            .status(503)
            .header("content-length", "0")
            .header("transfer-encoding", "chunked")
            .header("retry-after", "5")
            .body(Body::empty())
            .unwrap();
        let stream = String::from_utf8(stream_head(&resp).to_vec()).unwrap();
        assert_eq!(stream, "HTTP/1.1 503 Service Unavailable\r\nretry-after: 5\r\nconnection: close\r\n\r\n");
        let full = String::from_utf8(head(&resp, Some(12))).unwrap();
        assert!(full.ends_with("retry-after: 5\r\ncontent-length: 12\r\nconnection: close\r\n\r\n"), "{full}");
    }

    #[tokio::test]
    async fn rewind_reads_what_was_taken_first() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b" world").await.unwrap();
        });
        let (io, _) = l.accept().await.unwrap();
        let mut r = Rewind::new(Bytes::from_static(b"hello"), io);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        client.await.unwrap();
        assert_eq!(out, "hello world");
    }
}
