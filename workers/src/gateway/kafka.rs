//! The Kafka tail: every gateway replica reads every partition of the stream topic, so each one can serve
//! every client. No consumer group (`assign`, never `subscribe`), no commits: positions live in the clients'
//! event ids. Reading starts a short way back from the end so the replay buffer is full from the start.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cryptoviz_crds::config::WorkerConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use super::hub::Hub;
use crate::bus::Record;
use crate::bus::kafka::client_config;
use cryptoviz_runtime::health::Health;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to start each partition: `replay` events back from the end, spread over the partitions.
fn start_offsets(watermarks: &[(usize, i64, i64)], replay: usize) -> Vec<(usize, i64)> {
    let back = replay.div_ceil(watermarks.len().max(1)) as i64;
    watermarks.iter().map(|&(p, low, high)| (p, (high - back).max(low))).collect()
}

/// Partitions and their (low, high) watermarks, retried until the topic exists.
async fn watermarks(consumer: Arc<BaseConsumer>, topic: String) -> Vec<(usize, i64, i64)> {
    let mut delay = Duration::from_millis(200);
    loop {
        let c = consumer.clone();
        let t = topic.clone();
        let r = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(usize, i64, i64)>> {
            let md = c.fetch_metadata(Some(&t), METADATA_TIMEOUT)?;
            let Some(tm) = md.topics().iter().find(|m| m.name() == t) else { anyhow::bail!("topic not in metadata") };
            if let Some(e) = tm.error() {
                anyhow::bail!("topic metadata error: {e:?}");
            }
            if tm.partitions().is_empty() {
                anyhow::bail!("topic has no partitions");
            }
            tm.partitions()
                .iter()
                .map(|p| {
                    let (low, high) = c.fetch_watermarks(&t, p.id(), METADATA_TIMEOUT)?;
                    Ok((p.id() as usize, low, high))
                })
                .collect()
        })
        .await
        .expect("metadata task does not panic");
        match r {
            Ok(w) => return w,
            Err(e) => {
                tracing::warn!(topic = %topic, error = %e, "waiting for the stream topic");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Read the stream topic into `hub` forever. Ready once every partition is read up to the end it had
/// when we started.
pub async fn tail(cfg: WorkerConfig, hub: Arc<Hub>, health: Arc<Health>) -> anyhow::Result<()> {
    let topic = cfg.kafka.stream_topic.clone();
    let mut cc = client_config(&cfg.kafka);
    // librdkafka wants a group id even for assign(); it is never joined nor committed to.
    cc.set("group.id", format!("cryptoviz.{}.{}.gateway", cfg.pipeline.namespace, cfg.pipeline.name))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // Latency over throughput: the broker answers a fetch as soon as there is one record.
        .set("fetch.wait.max.ms", "50");
    let meta: Arc<BaseConsumer> = Arc::new(cc.create()?);
    let marks = watermarks(meta, topic.clone()).await;
    let starts = start_offsets(&marks, hub.opts.replay_buffer);
    hub.start_partitions(&starts);

    let consumer: StreamConsumer = cc.create()?;
    let mut tpl = TopicPartitionList::new();
    for &(p, start) in &starts {
        tpl.add_partition_offset(&topic, p as i32, Offset::Offset(start))?;
    }
    consumer.assign(&tpl)?;
    // Caught up when every partition's cursor reaches the end it had at start.
    let targets: Vec<(usize, i64)> = marks.iter().map(|&(p, _, high)| (p, high - 1)).collect();
    let caught_up = |hub: &Hub| {
        let c = hub.cursor();
        targets.iter().all(|&(p, last)| c.get(p) >= last)
    };
    let mut ready = caught_up(&hub);
    health.set_ready(ready);
    tracing::info!(topic = %topic, partitions = starts.len(), ?starts, "tailing the stream topic");

    loop {
        match consumer.recv().await {
            Ok(m) => {
                let rec = Record {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(Bytes::copy_from_slice),
                    payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                    timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
                };
                hub.ingest(&rec);
                if !ready && caught_up(&hub) {
                    ready = true;
                    health.set_ready(true);
                    tracing::info!("caught up with the stream topic");
                }
            }
            Err(e) => {
                // librdkafka reconnects by itself; keep going and say so.
                tracing::warn!(error = %e, "reading the stream topic");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_a_share_of_the_replay_buffer_back_from_the_end() {
        let s = start_offsets(&[(0, 0, 1000), (1, 990, 1000), (2, 0, 3)], 30);
        assert_eq!(s, vec![(0, 990), (1, 990), (2, 0)]);
    }
}
