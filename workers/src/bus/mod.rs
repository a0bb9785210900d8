//! Transports between the workers: Kafka in a cluster, an in-process bus in standalone mode, behind one
//! small interface so sources, alerts and fan-out run the same code either way.

pub mod kafka;
