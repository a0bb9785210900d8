use std::time::Duration;

use cryptoviz_tests::{TestEnv, unique, wait_for};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message};

fn config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", TestEnv::get().kafka_bootstrap());
    c
}

/// Create a topic with the admin API, read its metadata back, and round-trip a message.
#[tokio::test]
async fn topic_is_created_described_and_round_trips_a_message() {
    let topic = unique("smoke.kafka");
    let admin: AdminClient<DefaultClientContext> = config().create().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let res = admin.create_topics(&[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))], &opts).await.unwrap();
    assert!(res[0].is_ok(), "create topic: {:?}", res[0]);

    let producer: FutureProducer = config().set("enable.idempotence", "true").create().unwrap();
    // The broker answers metadata from its own cache, which can lag the controller's creation for a moment.
    wait_for("the new topic's 3 partitions in the metadata", Duration::from_secs(30), || async {
        let md = producer.client().fetch_metadata(Some(&topic), Duration::from_secs(10)).ok()?;
        (md.topics()[0].partitions().len() == 3).then_some(())
    })
    .await;

    producer
        .send(FutureRecord::to(&topic).key("BTC").payload("hello").partition(1), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let consumer: StreamConsumer =
        config().set("group.id", unique("smoke")).set("auto.offset.reset", "earliest").create().unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let msg =
        tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.expect("a message within 30 s").unwrap();
    assert_eq!(msg.key(), Some(&b"BTC"[..]));
    assert_eq!(msg.payload(), Some(&b"hello"[..]));
    assert_eq!(msg.partition(), 1);

    admin.delete_topics(&[&topic], &opts).await.unwrap();
}
