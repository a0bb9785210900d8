//! Kill the consumer process mid-run, restart it: every record is stored exactly once. One kill is a SIGKILL
//! wherever it lands (no flush, no commit, no leaving the group); the others are the consumer's own test
//! failpoint aborting right after a batch's database commit and before its offset commit, the window that
//! makes the next run re-read rows it already stored. The restarted consumer counting those rows as
//! duplicates shows the replay happened; the primary key keeps them out of the tables. A binary of its own: it
//! runs processes that die uncleanly.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use cryptoviz_tests::consumer::{Setup, tick, trade};
use cryptoviz_tests::{TestEnv, wait_for};
use cryptoviz_workers::consumer::flush::ABORT_AFTER_STORED_ENV;

const N: u64 = 30_000;
/// Runs ended by the failpoint, after the SIGKILLed one.
const ABORTS: u64 = 2;
/// Batches each of them stores before it aborts.
const STORED_BEFORE_ABORT: &str = "5";

#[tokio::test]
async fn killed_between_database_and_offset_commit_replays_and_stores_exactly_n_rows() {
    // Small batches so each run stores several before it is killed.
    let s = Setup::new(TestEnv::get().postgres_url(), 3, 200, "50ms").await;
    let records: Vec<_> =
        (0..N).map(|i| if i % 3 == 0 { trade(i, "100.25", "0.5") } else { tick(i, "42.000000000000000001") }).collect();
    let (trades, ticks) = (N.div_ceil(3), N - N.div_ceil(3));
    s.produce(&records).await;
    let stored = || async { s.count("ticks").await + s.count("trades").await };

    let mut w = s.start();
    let floor = (N / 4) as i64;
    wait_for(&format!("at least {floor} rows before the SIGKILL"), Duration::from_secs(120), || async {
        (stored().await >= floor).then_some(())
    })
    .await;
    w.kill();
    assert!(stored().await < N as i64, "the SIGKILL came after the end: not a mid-run kill");

    for k in 1..=ABORTS {
        let before = stored().await;
        let mut w = s.start_with_env(&[(ABORT_AFTER_STORED_ENV, STORED_BEFORE_ABORT)]);
        let status = w.exited(Duration::from_secs(120)).await;
        assert_eq!(status.signal(), Some(6), "run {k} ended by the failpoint's abort (SIGABRT), not {status}");
        let after = stored().await;
        assert!(after > before && after < N as i64, "run {k} stored rows mid-run: {before} → {after}");
    }

    let w = s.start();
    wait_for("every record stored after the restarts", Duration::from_secs(180), || async {
        (stored().await >= N as i64).then_some(())
    })
    .await;
    wait_for("offsets committed to the end", Duration::from_secs(60), || async { s.fully_committed().then_some(()) })
        .await;
    assert_eq!(s.count("ticks").await, ticks as i64, "ticks: none lost, none twice");
    assert_eq!(s.count("trades").await, trades as i64, "trades: none lost, none twice");
    let duplicates = w.metric("cryptoviz_consumer_rows_duplicate_total", &[]).await.unwrap();
    assert!(duplicates > 0.0, "the last run re-read rows the aborted one stored but did not commit");
    w.stop().await;
}
