//! The database stops mid-run and comes back: the consumer pauses, retries the same batch with backoff, is not
//! ready meanwhile, and resumes without losing or doubling a row. A binary of its own: it stops the shared
//! PostgreSQL server (`TestEnv::component`), which no other test may be using at that moment.

use std::time::Duration;

use cryptoviz_tests::consumer::{Setup, tick};
use cryptoviz_tests::{TestEnv, wait_for};

const HALF: u64 = 5_000;

/// Starts the server again even when an assertion fails, so later binaries find it running.
struct RestartOnDrop(bool);

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        if self.0 {
            TestEnv::get().component("postgres", "start");
        }
    }
}

#[tokio::test]
async fn database_stopped_and_restarted_mid_run_loses_nothing() {
    let env = TestEnv::get();
    let s = Setup::new(env.postgres_url(), 2, 500, "100ms").await;
    s.produce(&(0..HALF).map(|i| tick(i, "7.5")).collect::<Vec<_>>()).await;
    let w = s.start();
    wait_for("the first half stored", Duration::from_secs(60), || async {
        (s.count("ticks").await == HALF as i64).then_some(())
    })
    .await;
    w.wait_ready().await;

    env.component("postgres", "stop");
    let mut guard = RestartOnDrop(true);
    s.produce(&(HALF..2 * HALF).map(|i| tick(i, "7.5")).collect::<Vec<_>>()).await;
    wait_for("consumption paused on database errors", Duration::from_secs(60), || async {
        let paused = w.metric("cryptoviz_consumer_paused", &[]).await? == 1.0;
        let errors = w.metric("cryptoviz_consumer_database_errors_total", &[("kind", "connection")]).await?;
        (paused && errors >= 1.0).then_some(())
    })
    .await;
    wait_for("not ready while the database is down", Duration::from_secs(30), || async {
        w.get("/ready").await.filter(|(s, _)| *s == 503).map(drop)
    })
    .await;

    env.component("postgres", "start");
    guard.0 = false;
    wait_for("the second half stored after the restart", Duration::from_secs(120), || async {
        (s.try_count("ticks").await? == 2 * HALF as i64).then_some(())
    })
    .await;
    wait_for("offsets committed to the end", Duration::from_secs(60), || async { s.fully_committed().then_some(()) })
        .await;
    w.wait_ready().await;
    assert_eq!(w.metric("cryptoviz_consumer_paused", &[]).await, Some(0.0));
    assert_eq!(s.count("ticks").await, 2 * HALF as i64);
    assert_eq!(w.metric("cryptoviz_consumer_rows_written_total", &[("table", "ticks")]).await, Some(2.0 * HALF as f64));
    w.stop().await;
}
