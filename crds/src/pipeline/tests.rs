use super::*;

fn monitoring(json: &str) -> MonitoringSpec {
    serde_json::from_str(json).unwrap()
}

#[test]
fn pod_monitor_and_its_deprecated_alias_both_set_the_mode() {
    assert_eq!(monitoring("{}").pod_monitor_mode(), PodMonitorMode::Auto);
    assert_eq!(monitoring(r#"{"podMonitor":"disabled"}"#).pod_monitor_mode(), PodMonitorMode::Disabled);
    let old = monitoring(r#"{"serviceMonitor":"enabled"}"#);
    assert_eq!(old.pod_monitor_mode(), PodMonitorMode::Enabled);
    assert_eq!(old.pod_monitor_field(), "monitoring.serviceMonitor");
    let both = monitoring(r#"{"podMonitor":"disabled","serviceMonitor":"auto"}"#);
    assert_eq!(both.pod_monitor_mode(), PodMonitorMode::Disabled, "podMonitor wins");
    assert_eq!(both.pod_monitor_field(), "monitoring.podMonitor");
}

#[test]
fn the_deprecated_spelling_is_written_back_as_read() {
    let old = monitoring(r#"{"serviceMonitor":"disabled"}"#);
    assert_eq!(serde_json::to_value(&old).unwrap(), serde_json::json!({"serviceMonitor": "disabled"}));
}

#[test]
fn phase_serialises_as_its_name() {
    for phase in [Phase::Ready, Phase::Progressing, Phase::Degraded, Phase::Paused] {
        assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
    }
}
