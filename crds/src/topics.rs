//! The pipeline's topics as the spec declares them: names, partitions, replication and every config key
//! CryptoViz manages. The operator reconciles the broker to this and `cryptoviz-worker standalone --kafka`
//! creates exactly these, so one manifest means the same topics either way.

use std::collections::BTreeMap;

use crate::{CryptoPipeline, TopicRole, duration};

/// Config keys managed on every topic, and their values unless the spec's `config` overrides them.
pub const DEFAULT_CONFIGS: [(&str, &str); 3] =
    [("cleanup.policy", "delete"), ("compression.type", "producer"), ("max.message.bytes", "1048588")];

/// A topic as the spec declares it.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredTopic {
    /// The topic's role in the pipeline.
    pub role: TopicRole,
    /// Name on the broker.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i32,
    /// Every config key we manage, with its value.
    pub configs: BTreeMap<String, String>,
}

/// The desired topics of a pipeline (pure): every managed config key with its value, the user's
/// `config` over the defaults.
pub fn desired_topics(p: &CryptoPipeline) -> Vec<DesiredTopic> {
    TopicRole::ALL
        .into_iter()
        .map(|role| {
            let t = p.topic_spec(role);
            let mut configs: BTreeMap<String, String> =
                DEFAULT_CONFIGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            // The schema's pattern guarantees the duration parses.
            configs
                .insert("retention.ms".into(), duration::parse_millis(&t.retention).unwrap_or(604_800_000).to_string());
            configs.extend(t.config.iter().map(|(k, v)| (k.clone(), v.clone())));
            DesiredTopic {
                role,
                name: p.topic_name(role),
                partitions: t.partitions,
                replication_factor: t.replication_factor,
                configs,
            }
        })
        .collect()
}
