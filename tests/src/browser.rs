//! Headless Chromium (Debian's package) driving our live pages: the gateway's and standalone mode's tests.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::unique;
use tokio::process::Command;

/// Debian's `chromium` (installed by tests/env/toolchain; installed here when missing).
fn chromium() -> PathBuf {
    let found = |p: &str| std::path::Path::new(p).exists().then(|| PathBuf::from(p));
    if let Some(p) = found("/usr/bin/chromium") {
        return p;
    }
    let status = std::process::Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", "chromium"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("run apt-get");
    assert!(status.success(), "apt-get install chromium failed");
    found("/usr/bin/chromium").expect("chromium installed")
}

/// A headless Chromium on `url`. It prints its result once the page's network is idle — a live EventSource
/// never is, so it finishes only after the server ends the stream.
pub struct Browser {
    child: tokio::process::Child,
    profile: PathBuf,
}

impl Browser {
    /// Start Chromium with `args` (`--dump-dom`, `--screenshot=…`) on `url`.
    pub fn open(args: &[&str], url: &str) -> Browser {
        let profile = std::env::temp_dir().join(unique("chromium-profile"));
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--window-size=1200,800",
                "--virtual-time-budget=2000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run chromium");
        Browser { child, profile }
    }

    /// Wait (60 s at most) for Chromium to finish; its stdout.
    pub async fn finish(self) -> String {
        let out = tokio::time::timeout(Duration::from_secs(60), self.child.wait_with_output())
            .await
            .expect("chromium finishes within 60 s of the stream ending")
            .expect("chromium output");
        let _ = std::fs::remove_dir_all(&self.profile);
        assert!(out.status.success(), "chromium failed: {:?}", out.status);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
