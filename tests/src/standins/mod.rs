//! Stand-ins for the market-data APIs the scraper reads: local HTTP and WebSocket servers on `127.0.0.1:0`
//! that play a script of replies (the documented formats, from `tests/fixtures/scraper/`, and the bad cases:
//! 429 with `Retry-After`, 500, truncated JSON, wrong types, disconnects, repeated snapshots, silence) and
//! record what the client sent. Used by the scraper's integration tests and the end-to-end test.

pub mod http;
pub mod ws;

use std::path::PathBuf;

/// Path of a scraper fixture (`tests/fixtures/scraper/<name>`).
pub fn fixture_path(name: &str) -> PathBuf {
    crate::repo_root().join("tests/fixtures/scraper").join(name)
}

/// A scraper fixture's bytes.
pub fn fixture(name: &str) -> Vec<u8> {
    let p = fixture_path(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

/// A fixture holding one WebSocket frame per line (blank lines and `#` comments skipped).
pub fn frames(name: &str) -> Vec<String> {
    String::from_utf8(fixture(name))
        .expect("fixture is UTF-8")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}
