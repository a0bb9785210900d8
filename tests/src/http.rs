//! The one HTTP client of the tests: a plain GET over a fresh loopback connection, returning the status
//! and the body. Raw sockets rather than a client library so the tests read exactly what the servers send
//! (and depend on nothing the workers use).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one GET may take, connect to last byte.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `GET url` (`http://host:port/path`, the scheme optional) as HTTP/1.1 with `Connection: close`;
/// `(status, body)`, the body de-chunked when the server chunked it. `None` when nothing answers within
/// 5 s or the reply is not HTTP.
pub async fn get(url: &str) -> Option<(u16, String)> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    tokio::time::timeout(TIMEOUT, exchange(host, path)).await.ok()?
}

/// The body of `GET url` when the status is 2xx; `None` otherwise or when nothing answers.
pub async fn body(url: &str) -> Option<String> {
    get(url).await.filter(|(status, _)| (200..300).contains(status)).map(|(_, body)| body)
}

async fn exchange(host: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(host).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok()?;
    parse_response(&raw)
}

/// Status and body of a whole HTTP/1.x response.
fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Join the chunks of a chunked body (extensions and trailers ignored).
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_field = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = usize::from_str_radix(size_field.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_and_plain_body() {
        let r = parse_response(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nnope");
        assert_eq!(r, Some((503, "nope".into())));
    }

    #[test]
    fn joins_a_chunked_body() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw), Some((200, "abcde".into())));
    }

    #[test]
    fn a_truncated_chunk_is_no_answer() {
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\nab"), None);
    }

    #[tokio::test]
    async fn nothing_listening_is_none() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert_eq!(get(&format!("http://127.0.0.1:{port}/health")).await, None);
    }
}
