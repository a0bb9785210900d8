//! Finding the workspace binaries the tests run as processes (`cryptoviz-worker`, `cryptoviz-operator`),
//! the one way every test and benchmark does it.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::repo_root;

/// Path of a workspace binary built by `cargo build` (tests/run builds them before the integration tests),
/// under `$CARGO_TARGET_DIR` (default `<repo>/target`) in the profile `CRYPTOVIZ_PROFILE` names (default
/// `debug`; `release` for benchmarks). Panics saying how to build it when it is missing.
pub fn path(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| repo_root().join("target"));
    let profile = std::env::var("CRYPTOVIZ_PROFILE").unwrap_or_else(|_| "debug".into());
    let p = target.join(&profile).join(name);
    let flag = if profile == "debug" { String::new() } else { format!(" --profile {profile}") };
    assert!(p.exists(), "{} is missing: run `cargo build --workspace --bins{flag}` first", p.display());
    p
}

/// A command running `cryptoviz-worker <mode>` with stdin closed; the caller adds arguments, environment
/// and output handling (wrap it in `tokio::process::Command::from` for async waiting).
pub fn worker(mode: &str) -> Command {
    let mut cmd = Command::new(path("cryptoviz-worker"));
    cmd.arg(mode).stdin(Stdio::null());
    cmd
}
