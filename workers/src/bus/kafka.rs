//! Kafka clients configured from the worker configuration: the one place connection settings are turned
//! into librdkafka properties (the operator uses the same `KafkaConfig::client_properties`).

use cryptoviz_crds::config::KafkaConfig;
use rdkafka::ClientConfig;

/// A librdkafka configuration for this pipeline's brokers, credentials read from the environment.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in kafka.client_properties(|var| std::env::var(var).ok()) {
        c.set(k, v);
    }
    c
}
