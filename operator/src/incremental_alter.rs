//! Kafka's IncrementalAlterConfigs (KIP-339), which rust-rdkafka does not wrap yet: sets only the keys we
//! manage and leaves every other key on the topic alone. The legacy AlterConfigs replaces a topic's whole
//! dynamic configuration, which races with anyone else changing it between our read and our write.
//!
//! A thin, blocking wrapper over librdkafka's C API (call it from `spawn_blocking`).

use std::ffi::{CStr, CString};
use std::time::Duration;

use rdkafka::client::{Client, ClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka_sys as rd;

/// Set `configs` on `topic`, leaving keys not listed untouched.
pub fn set_topic_configs<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    configs: &[(String, String)],
    timeout: Duration,
) -> Result<(), KafkaError> {
    let admin_err = |code: rd::rd_kafka_resp_err_t| KafkaError::AdminOp(RDKafkaErrorCode::from(code));
    let name = CString::new(topic).map_err(|_| KafkaError::AdminOpCreation("topic name has a NUL byte".into()))?;
    let pairs: Vec<(CString, CString)> = configs
        .iter()
        .map(|(k, v)| Ok((CString::new(k.as_str())?, CString::new(v.as_str())?)))
        .collect::<Result<_, std::ffi::NulError>>()
        .map_err(|_| KafkaError::AdminOpCreation("config has a NUL byte".into()))?;
    let rk = client.native_ptr();
    // SAFETY: every pointer below is created here, checked for null, used while alive and destroyed once;
    // `rk` outlives the call because `client` is borrowed for its duration.
    unsafe {
        let queue = rd::rd_kafka_queue_new(rk);
        let resource =
            rd::rd_kafka_ConfigResource_new(rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC, name.as_ptr());
        let options =
            rd::rd_kafka_AdminOptions_new(rk, rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS);
        let cleanup = |event: *mut rd::rd_kafka_event_t| {
            if !event.is_null() {
                rd::rd_kafka_event_destroy(event);
            }
            rd::rd_kafka_AdminOptions_destroy(options);
            rd::rd_kafka_ConfigResource_destroy(resource);
            rd::rd_kafka_queue_destroy(queue);
        };
        for (k, v) in &pairs {
            let e = rd::rd_kafka_ConfigResource_add_incremental_config(
                resource,
                k.as_ptr(),
                rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET,
                v.as_ptr(),
            );
            if !e.is_null() {
                let code = rd::rd_kafka_error_code(e);
                rd::rd_kafka_error_destroy(e);
                cleanup(std::ptr::null_mut());
                return Err(admin_err(code));
            }
        }
        let mut errstr = [0 as std::ffi::c_char; 256];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        rd::rd_kafka_AdminOptions_set_request_timeout(options, ms, errstr.as_mut_ptr(), errstr.len());
        let mut batch = [resource];
        rd::rd_kafka_IncrementalAlterConfigs(rk, batch.as_mut_ptr(), 1, options, queue);
        let event = rd::rd_kafka_queue_poll(queue, ms.saturating_add(1000));
        if event.is_null() {
            cleanup(event);
            return Err(KafkaError::AdminOp(RDKafkaErrorCode::OperationTimedOut));
        }
        let err = rd::rd_kafka_event_error(event);
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            cleanup(event);
            return Err(admin_err(err));
        }
        let result = rd::rd_kafka_event_IncrementalAlterConfigs_result(event);
        let mut n = 0usize;
        let resources = rd::rd_kafka_IncrementalAlterConfigs_result_resources(result, &mut n);
        for i in 0..n {
            let r = *resources.add(i);
            let e = rd::rd_kafka_ConfigResource_error(r);
            if e != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                let msg = rd::rd_kafka_ConfigResource_error_string(r);
                if !msg.is_null() {
                    tracing::warn!(topic, error = %CStr::from_ptr(msg).to_string_lossy(), "IncrementalAlterConfigs refused");
                }
                cleanup(event);
                return Err(admin_err(e));
            }
        }
        cleanup(event);
    }
    Ok(())
}
