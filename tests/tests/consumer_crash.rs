//! SIGKILL the consumer process several times mid-run (no flush, no commit, no leaving the group), restart it:
//! every record is stored exactly once. A binary of its own: it runs processes that die uncleanly.

use std::time::Duration;

use cryptoviz_tests::consumer::{Setup, tick, trade};
use cryptoviz_tests::{TestEnv, wait_for};

const N: u64 = 30_000;
const KILLS: u64 = 3;

#[tokio::test]
async fn killed_mid_run_several_times_stores_exactly_n_rows() {
    // Small batches so every kill lands between a database commit and its offset commit often enough.
    let s = Setup::new(TestEnv::get().postgres_url(), 3, 200, "50ms").await;
    let records: Vec<_> =
        (0..N).map(|i| if i % 3 == 0 { trade(i, "100.25", "0.5") } else { tick(i, "42.000000000000000001") }).collect();
    let (trades, ticks) = (N.div_ceil(3), N - N.div_ceil(3));
    s.produce(&records).await;

    let stored = || async { s.count("ticks").await + s.count("trades").await };
    for k in 1..=KILLS {
        let mut w = s.start();
        let floor = (N * k / (KILLS + 1)) as i64;
        // Kill as soon as this run has stored its share: mid-run, while batches are in flight.
        wait_for(&format!("at least {floor} rows before kill {k}"), Duration::from_secs(120), || async {
            (stored().await >= floor).then_some(())
        })
        .await;
        w.kill();
        let at_kill = stored().await;
        assert!(at_kill < N as i64, "kill {k} came after the end ({at_kill} rows): not a mid-run kill");
    }

    let w = s.start();
    wait_for("every record stored after the restarts", Duration::from_secs(180), || async {
        (stored().await >= N as i64).then_some(())
    })
    .await;
    wait_for("offsets committed to the end", Duration::from_secs(60), || async { s.fully_committed().then_some(()) })
        .await;
    assert_eq!(s.count("ticks").await, ticks as i64, "ticks");
    assert_eq!(s.count("trades").await, trades as i64, "trades");
    w.stop().await;
}
