//! Logging for every worker mode: JSON in pods (`CRYPTOVIZ_LOG_FORMAT=json`), text on a terminal.

/// Install the global subscriber. `RUST_LOG` sets the filter (default `info`).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,rdkafka=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("CRYPTOVIZ_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().with_current_span(true).with_span_list(false).init();
    } else {
        builder.init();
    }
}
