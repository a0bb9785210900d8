//! Status from observed state, as pure functions: one condition per concern, the aggregate `Ready`, and a
//! phase. The controller patches the result only when it differs from the live status.

use cryptoviz_crds::{CryptoPipeline, CryptoPipelineStatus, Phase, TopicsStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::conditions::{ConditionStatus, ConditionType, KnownReason, Reason};
use crate::workloads::Component;

/// The verdict of one concern: becomes a `metav1.Condition`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The condition type, e.g. `TopicsReady`.
    pub type_: ConditionType,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// CamelCase reason a person can act on.
    pub reason: Reason,
    /// One sentence with the detail.
    pub message: String,
}

impl Check {
    /// A True condition.
    pub fn ok(type_: ConditionType, reason: impl Into<Reason>, message: impl Into<String>) -> Self {
        Check { type_, status: ConditionStatus::True, reason: reason.into(), message: message.into() }
    }
    /// A False condition.
    pub fn failed(type_: ConditionType, reason: impl Into<Reason>, message: impl Into<String>) -> Self {
        Check { type_, status: ConditionStatus::False, reason: reason.into(), message: message.into() }
    }
    /// An Unknown condition.
    pub fn unknown(type_: ConditionType, reason: impl Into<Reason>, message: impl Into<String>) -> Self {
        Check { type_, status: ConditionStatus::Unknown, reason: reason.into(), message: message.into() }
    }
    /// True when status is True.
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
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
        return Check::ok(t, KnownReason::NotRequired, why);
    }
    let Some(d) = live else {
        return Check::failed(
            t,
            KnownReason::DeploymentMissing,
            format!("Deployment {} does not exist yet", crate::workloads::child_name(p, c)),
        );
    };
    let generation = d.metadata.generation.unwrap_or_default();
    let Some(s) = &d.status else {
        return Check::unknown(t, KnownReason::RolloutPending, "the Deployment has no status yet");
    };
    if s.observed_generation.unwrap_or_default() < generation {
        return Check::failed(
            t,
            KnownReason::RolloutInProgress,
            "the Deployment controller has not seen the latest spec yet",
        );
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if want == 0 {
        return Check::ok(t, KnownReason::ScaledToZero, "replicas is 0");
    }
    let conds = s.conditions.as_deref().unwrap_or_default();
    // The Deployment controller's own condition types and statuses, not ours.
    let cond = |ty: &str, status: ConditionStatus| conds.iter().find(|c| c.type_ == ty && c.status == status.as_str());
    if let Some(pc) = cond("Progressing", ConditionStatus::False) {
        return Check::failed(
            t,
            pc.reason.as_deref().map_or(KnownReason::ProgressDeadlineExceeded.into(), Reason::parse),
            pc.message.clone().unwrap_or_default(),
        );
    }
    let updated = s.updated_replicas.unwrap_or_default();
    let available = s.available_replicas.unwrap_or_default();
    let total = s.replicas.unwrap_or_default();
    if updated < want || total > want {
        return Check::failed(t, KnownReason::RolloutInProgress, format!("{updated} of {want} pods updated"));
    }
    if cond("Available", ConditionStatus::True).is_some() && available >= want {
        Check::ok(t, KnownReason::Available, format!("{available} of {want} pods available"))
    } else {
        Check::failed(t, KnownReason::Unavailable, format!("{available} of {want} pods available"))
    }
}

/// The aggregate `Ready` condition from the concerns' checks.
pub fn ready_check(checks: &[Check]) -> Check {
    match checks.iter().find(|c| !c.is_true()) {
        None => Check::ok(
            ConditionType::Ready,
            KnownReason::AllComponentsReady,
            "topics, storage and every worker are ready",
        ),
        Some(c) => Check::failed(ConditionType::Ready, c.reason.clone(), format!("{}: {}", c.type_, c.message)),
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
    let phase = phase(&ready, &checks);
    checks.push(Check::failed(ConditionType::Paused, KnownReason::NotPaused, "reconciliation is active"));
    checks.push(ready);
    CryptoPipelineStatus {
        observed_generation: generation,
        phase: Some(phase),
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
    let mut checks = kept_checks(&prev);
    let note = format!("{why}: the operator makes no changes");
    checks.push(Check::ok(ConditionType::Paused, KnownReason::ReconciliationPaused, note.clone()));
    checks.push(Check::failed(ConditionType::Ready, KnownReason::ReconciliationPaused, note));
    CryptoPipelineStatus {
        phase: Some(Phase::Paused),
        conditions: merge(Some(&prev), checks, prev.observed_generation, now),
        ..prev
    }
}

/// The status of a pipeline whose spec is invalid at run time (`problems`, one per field): every concern as
/// it was, `Ready=False` with reason `InvalidSpec` naming the fields, phase Degraded. `observedGeneration`
/// is this generation: it was read, and refused.
pub fn invalid(p: &CryptoPipeline, problems: &[String], now: &Time) -> CryptoPipelineStatus {
    let prev = p.status.clone().unwrap_or_default();
    let mut checks = kept_checks(&prev);
    checks.push(Check::failed(ConditionType::Paused, KnownReason::NotPaused, "reconciliation is active"));
    let message = format!("the spec is invalid, nothing is applied until it is fixed: {}", problems.join("; "));
    checks.push(Check::failed(ConditionType::Ready, KnownReason::InvalidSpec, message));
    CryptoPipelineStatus {
        observed_generation: p.metadata.generation,
        phase: Some(Phase::Degraded),
        conditions: merge(Some(&prev), checks, p.metadata.generation, now),
        ..prev
    }
}

/// The concerns' conditions of a previous status as checks, without `Paused` and `Ready` (conditions of types
/// we do not write, none today, are dropped).
fn kept_checks(prev: &CryptoPipelineStatus) -> Vec<Check> {
    prev.conditions
        .iter()
        .filter_map(|c| {
            let type_ = ConditionType::parse(&c.type_)?;
            (type_ != ConditionType::Paused && type_ != ConditionType::Ready).then(|| Check {
                type_,
                status: ConditionStatus::parse(&c.status).unwrap_or(ConditionStatus::Unknown),
                reason: Reason::parse(&c.reason),
                message: c.message.clone(),
            })
        })
        .collect()
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
            let old = previous.and_then(|s| condition(s, c.type_));
            let last_transition_time = match old {
                Some(o) if o.status == c.status.as_str() => o.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: c.type_.to_string(),
                status: c.status.to_string(),
                reason: c.reason.to_string(),
                message: c.message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The condition of a type in a status, if present.
pub fn condition(s: &CryptoPipelineStatus, type_: ConditionType) -> Option<&Condition> {
    s.conditions.iter().find(|c| c.type_ == type_.as_str())
}

/// Whether the condition of a type is present with this status.
pub fn condition_is(s: &CryptoPipelineStatus, type_: ConditionType, status: ConditionStatus) -> bool {
    condition(s, type_).is_some_and(|c| c.status == status.as_str())
}

/// The phase from the aggregate `Ready` and the concerns' checks: Ready, else Progressing while a worker is
/// still coming up (missing, rolling out, no status yet), else Degraded.
pub fn phase(ready: &Check, checks: &[Check]) -> Phase {
    let coming_up = |c: &Check| {
        c.reason == KnownReason::RolloutInProgress
            || c.reason == KnownReason::DeploymentMissing
            || c.status == ConditionStatus::Unknown
    };
    if ready.is_true() {
        Phase::Ready
    } else if checks.iter().any(coming_up) {
        Phase::Progressing
    } else {
        Phase::Degraded
    }
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
        assert_eq!(deployment_check(&p, Component::Scraper, None).reason, KnownReason::DeploymentMissing);
        assert_eq!(
            deployment_check(&p, Component::Scraper, Some(&dep(2, 1, true))).reason,
            KnownReason::RolloutInProgress
        );
        assert_eq!(deployment_check(&p, Component::Scraper, Some(&dep(2, 2, false))).reason, KnownReason::Unavailable);
        assert!(deployment_check(&p, Component::Scraper, Some(&dep(2, 2, true))).is_true());
        assert_eq!(deployment_check(&p, Component::Consumer, None).reason, KnownReason::NotRequired);
    }

    #[test]
    fn a_stalled_rollout_passes_the_deployment_reason_on() {
        let mut d = dep(2, 2, false);
        d.status.as_mut().unwrap().conditions.as_mut().unwrap().push(
            serde_json::from_value(serde_json::json!({"type": "Progressing", "status": "False",
                "reason": "ProgressDeadlineExceeded", "message": "stuck"}))
            .unwrap(),
        );
        let c = deployment_check(&p(), Component::Scraper, Some(&d));
        assert_eq!(
            (c.status, c.reason, c.message.as_str()),
            (ConditionStatus::False, Reason::Known(KnownReason::ProgressDeadlineExceeded), "stuck")
        );
    }

    #[test]
    fn phase_is_ready_progressing_or_degraded() {
        let ok = || Check::ok(ConditionType::TopicsReady, KnownReason::Provisioned, "");
        let rolling = Check::failed(ConditionType::ScraperReady, KnownReason::RolloutInProgress, "");
        let missing = Check::failed(ConditionType::GatewayReady, KnownReason::DeploymentMissing, "");
        let no_status = Check::unknown(ConditionType::GatewayReady, KnownReason::RolloutPending, "");
        let broken = Check::failed(ConditionType::StorageReady, KnownReason::DatabaseUnreachable, "");
        let of = |checks: Vec<Check>| phase(&ready_check(&checks), &checks);
        assert_eq!(of(vec![ok()]), Phase::Ready);
        assert_eq!(of(vec![ok(), rolling]), Phase::Progressing);
        assert_eq!(of(vec![ok(), missing]), Phase::Progressing);
        assert_eq!(of(vec![ok(), no_status.clone()]), Phase::Progressing);
        assert_eq!(of(vec![broken.clone()]), Phase::Degraded);
        assert_eq!(of(vec![broken, no_status]), Phase::Progressing, "a worker coming up wins over a failure");
    }

    #[test]
    fn ready_names_the_first_failing_concern_and_transition_times_stick() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap());
        let checks = || {
            vec![
                Check::ok(ConditionType::TopicsReady, KnownReason::Provisioned, ""),
                Check::failed(ConditionType::ScraperReady, KnownReason::Unavailable, "0 of 1"),
            ]
        };
        let s0 = compute(&p(), Observed { checks: checks(), topics: None, previous: None }, &t0);
        let ready = condition(&s0, ConditionType::Ready).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Unavailable"));
        assert_eq!(ready.message, "ScraperReady: 0 of 1");
        assert_eq!(s0.phase, Some(Phase::Degraded));
        assert!(condition_is(&s0, ConditionType::Paused, ConditionStatus::False));
        assert_eq!(s0.observed_generation, Some(3));
        let s1 = compute(&p(), Observed { checks: checks(), topics: None, previous: Some(&s0) }, &t1);
        assert_eq!(s0, s1, "an unchanged observation gives an identical status (no write)");
    }

    #[test]
    fn pausing_keeps_the_concerns_and_sets_paused_and_not_ready() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
        let checks = vec![Check::ok(ConditionType::TopicsReady, KnownReason::Provisioned, "fine")];
        let mut p = p();
        p.status = Some(compute(&p, Observed { checks, topics: None, previous: None }, &t0));
        p.spec.paused = true;
        let s = paused(&p, &t0);
        assert_eq!(s.phase, Some(Phase::Paused));
        assert!(condition_is(&s, ConditionType::Paused, ConditionStatus::True));
        assert!(condition_is(&s, ConditionType::TopicsReady, ConditionStatus::True));
        let ready = condition(&s, ConditionType::Ready).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "ReconciliationPaused"));
        assert_eq!(s.conditions.len(), 3, "one condition per type: {:?}", s.conditions);
    }

    #[test]
    fn an_invalid_spec_keeps_the_concerns_and_names_the_fields_on_ready() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
        let checks = vec![Check::ok(ConditionType::TopicsReady, KnownReason::Provisioned, "fine")];
        let mut p = p();
        p.status = Some(compute(&p, Observed { checks, topics: None, previous: None }, &t0));
        p.metadata.generation = Some(4);
        let s = invalid(&p, &["spec.timescale.compressAfter: too late".into()], &t0);
        assert_eq!((s.phase, s.observed_generation), (Some(Phase::Degraded), Some(4)));
        assert!(condition_is(&s, ConditionType::TopicsReady, ConditionStatus::True));
        assert!(condition_is(&s, ConditionType::Paused, ConditionStatus::False));
        let ready = condition(&s, ConditionType::Ready).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidSpec"));
        assert!(ready.message.ends_with("spec.timescale.compressAfter: too late"), "{}", ready.message);
        assert_eq!(s.conditions.len(), 3, "one condition per type: {:?}", s.conditions);
    }
}
