//! Status from observed state, as pure functions: one condition per concern, the aggregate `Ready`, and a
//! phase. The controller patches the result only when it differs from the live status.

use cryptoviz_crds::{CryptoPipeline, CryptoPipelineStatus, TopicsStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::workloads::Component;

/// The verdict of one concern: becomes a `metav1.Condition`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The condition type, e.g. `TopicsReady`.
    pub type_: &'static str,
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// CamelCase reason a person can act on.
    pub reason: String,
    /// One sentence with the detail.
    pub message: String,
}

impl Check {
    /// A True condition.
    pub fn ok(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Check { type_, status: "True", reason: reason.into(), message: message.into() }
    }
    /// A False condition.
    pub fn failed(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Check { type_, status: "False", reason: reason.into(), message: message.into() }
    }
    /// An Unknown condition.
    pub fn unknown(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Check { type_, status: "Unknown", reason: reason.into(), message: message.into() }
    }
    /// True when status is True.
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// The readiness of one worker component, from its live Deployment.
pub fn deployment_check(p: &CryptoPipeline, c: Component, live: Option<&Deployment>) -> Check {
    let t = c.condition_type();
    if !c.wanted(p) {
        let why = match c {
            Component::Consumer => "no timescale storage is configured, so no consumer runs",
            _ => "disabled in the spec",
        };
        return Check::ok(t, "NotRequired", why);
    }
    let Some(d) = live else {
        return Check::failed(
            t,
            "DeploymentMissing",
            format!("Deployment {} does not exist yet", crate::workloads::child_name(p, c)),
        );
    };
    let generation = d.metadata.generation.unwrap_or_default();
    let Some(s) = &d.status else {
        return Check::unknown(t, "RolloutPending", "the Deployment has no status yet");
    };
    if s.observed_generation.unwrap_or_default() < generation {
        return Check::failed(t, "RolloutInProgress", "the Deployment controller has not seen the latest spec yet");
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if want == 0 {
        return Check::ok(t, "ScaledToZero", "replicas is 0");
    }
    let conds = s.conditions.as_deref().unwrap_or_default();
    let cond = |ty: &str| conds.iter().find(|c| c.type_ == ty);
    if let Some(pc) = cond("Progressing").filter(|c| c.status == "False") {
        return Check::failed(
            t,
            pc.reason.as_deref().unwrap_or("ProgressDeadlineExceeded"),
            pc.message.clone().unwrap_or_default(),
        );
    }
    let updated = s.updated_replicas.unwrap_or_default();
    let available = s.available_replicas.unwrap_or_default();
    let total = s.replicas.unwrap_or_default();
    if updated < want || total > want {
        return Check::failed(t, "RolloutInProgress", format!("{updated} of {want} pods updated"));
    }
    if cond("Available").is_some_and(|c| c.status == "True") && available >= want {
        Check::ok(t, "Available", format!("{available} of {want} pods available"))
    } else {
        Check::failed(t, "Unavailable", format!("{available} of {want} pods available"))
    }
}

/// The aggregate `Ready` condition from the concerns' checks.
pub fn ready_check(checks: &[Check]) -> Check {
    match checks.iter().find(|c| !c.is_true()) {
        None => Check::ok("Ready", "AllComponentsReady", "topics, storage and every worker are ready"),
        Some(c) => Check::failed("Ready", &c.reason, format!("{}: {}", c.type_, c.message)),
    }
}

/// Inputs of [`compute`].
pub struct Observed<'a> {
    /// One check per concern (TopicsReady, StorageReady, the three workers).
    pub checks: Vec<Check>,
    /// Provisioned topic names, when known.
    pub topics: Option<TopicsStatus>,
    /// The previous status (to keep transition times).
    pub previous: Option<&'a CryptoPipelineStatus>,
}

/// The status to write: conditions keep their `lastTransitionTime` while their status does not change.
pub fn compute(p: &CryptoPipeline, o: Observed<'_>, now: &Time) -> CryptoPipelineStatus {
    let generation = p.metadata.generation;
    let mut checks = o.checks;
    let ready = ready_check(&checks);
    let phase = if ready.is_true() {
        "Ready"
    } else if checks
        .iter()
        .any(|c| c.reason == "RolloutInProgress" || c.reason == "DeploymentMissing" || c.status == "Unknown")
    {
        "Progressing"
    } else {
        "Degraded"
    };
    checks.push(Check::failed("Paused", "NotPaused", "reconciliation is active"));
    checks.push(ready);
    CryptoPipelineStatus {
        observed_generation: generation,
        phase: Some(phase.into()),
        conditions: merge(o.previous, checks, generation, now),
        topics: o.topics,
        gateway_url: Component::Gateway.wanted(p).then(|| crate::workloads::gateway_url(p)),
        schema: p.spec.timescale.as_ref().map(|_| p.schema_name()),
    }
}

/// The status of a paused pipeline: everything as it was, plus `Paused=True`.
pub fn paused(p: &CryptoPipeline, now: &Time) -> CryptoPipelineStatus {
    let prev = p.status.clone().unwrap_or_default();
    let why =
        if p.spec.paused { "spec.paused is true" } else { "annotation cryptoviz.io/pause-reconciliation is \"true\"" };
    let mut checks: Vec<Check> = prev
        .conditions
        .iter()
        .filter(|c| c.type_ != "Paused" && c.type_ != "Ready")
        .map(|c| Check {
            type_: leak_type(&c.type_),
            status: leak_status(&c.status),
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .collect();
    checks.push(Check::ok("Paused", "ReconciliationPaused", format!("{why}: the operator makes no changes")));
    checks.push(Check::failed("Ready", "ReconciliationPaused", format!("{why}: the operator makes no changes")));
    CryptoPipelineStatus {
        phase: Some("Paused".into()),
        conditions: merge(Some(&prev), checks, prev.observed_generation, now),
        ..prev
    }
}

/// The condition types this operator writes (a paused pipeline carries its previous ones over).
fn leak_type(t: &str) -> &'static str {
    const KNOWN: [&str; 8] = [
        "TopicsReady",
        "StorageReady",
        "MonitoringReady",
        "ScraperReady",
        "ConsumerReady",
        "GatewayReady",
        "Paused",
        "Ready",
    ];
    KNOWN.into_iter().find(|k| *k == t).unwrap_or("Unknown")
}

fn leak_status(s: &str) -> &'static str {
    match s {
        "True" => "True",
        "False" => "False",
        _ => "Unknown",
    }
}

fn merge(
    previous: Option<&CryptoPipelineStatus>,
    checks: Vec<Check>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    checks
        .into_iter()
        .map(|c| {
            let old = previous.and_then(|s| s.conditions.iter().find(|o| o.type_ == c.type_));
            let last_transition_time = match old {
                Some(o) if o.status == c.status => o.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: c.type_.into(),
                status: c.status.into(),
                reason: c.reason,
                message: c.message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The condition of a type in a status, if present.
pub fn condition<'a>(s: &'a CryptoPipelineStatus, type_: &str) -> Option<&'a Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> CryptoPipeline {
        let spec = serde_json::from_str(
            r#"{"symbols":["BTC"],"sources":[{"kind":"synthetic"}],"kafka":{"bootstrapServers":"k:9092"}}"#,
        )
        .unwrap();
        let mut p = CryptoPipeline::new("demo", spec);
        p.metadata.generation = Some(3);
        p
    }

    fn dep(generation: i64, observed: i64, available: bool) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"generation": generation},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"observedGeneration": observed, "replicas": 1, "updatedReplicas": 1,
                       "availableReplicas": if available {1} else {0},
                       "conditions": [{"type": "Available", "status": if available {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    #[test]
    fn deployment_readiness_follows_the_live_object() {
        let p = p();
        assert_eq!(deployment_check(&p, Component::Scraper, None).reason, "DeploymentMissing");
        assert_eq!(deployment_check(&p, Component::Scraper, Some(&dep(2, 1, true))).reason, "RolloutInProgress");
        assert_eq!(deployment_check(&p, Component::Scraper, Some(&dep(2, 2, false))).reason, "Unavailable");
        assert!(deployment_check(&p, Component::Scraper, Some(&dep(2, 2, true))).is_true());
        assert_eq!(deployment_check(&p, Component::Consumer, None).reason, "NotRequired");
    }

    #[test]
    fn ready_names_the_first_failing_concern_and_transition_times_stick() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap());
        let checks = || {
            vec![Check::ok("TopicsReady", "Provisioned", ""), Check::failed("ScraperReady", "Unavailable", "0 of 1")]
        };
        let s0 = compute(&p(), Observed { checks: checks(), topics: None, previous: None }, &t0);
        let ready = condition(&s0, "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Unavailable"));
        assert_eq!(s0.observed_generation, Some(3));
        let s1 = compute(&p(), Observed { checks: checks(), topics: None, previous: Some(&s0) }, &t1);
        assert_eq!(s0, s1, "an unchanged observation gives an identical status (no write)");
    }
}
