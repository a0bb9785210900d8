//! The CryptoPipeline controller: wiring, `reconcile()` as a list of steps, `error_policy()`; the children in
//! `children.rs`, the finalizer in `finalizer.rs`.
//!
//! Reconcile is desired → observed → diff → apply: children are compared with the live objects held in
//! reflector stores (no reads per reconcile) and applied only when they differ; the status is patched only
//! when it changed; our own status writes do not trigger reconciles (generation/annotation predicate).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cryptoviz_crds::{CryptoPipeline, CryptoPipelineStatus, TopicRole};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{Instrument, info_span, warn};

use crate::cache::Cached;
use crate::conditions::{ConditionStatus, ConditionType, KnownReason, Reason};
use crate::metrics::Metrics;
use crate::status::{self, Check, Observed};
use crate::storage::Storage;
use crate::topics::{TopicAdmin, TopicsOutcome};
use crate::workloads::{self, Component, FIELD_MANAGER, MANAGED_BY, WorkloadDefaults};
#[cfg(test)]
use children::apply_if_changed;
use children::apply_workloads;
use cryptoviz_runtime::backoff::Backoff;
use finalizer::{finalize, sync_finalizer};

mod children;
mod finalizer;

/// Finalizer guarding external clean-up (topics, schema) when a deletion policy is `Delete`.
pub const FINALIZER: &str = "cryptoviz.io/cleanup";

/// Errors of one reconciliation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The spec passed the schema but is invalid at run time: one problem per field, each naming it. The
    /// status says so (`Ready=False`, reason `InvalidSpec`) before the reconcile fails with this.
    #[error("invalid spec: {}", .0.join("; "))]
    InvalidSpec(Vec<String>),
    /// The reconcile did not finish within `--reconcile-timeout` and was cancelled.
    #[error("reconcile did not finish within {0:?}")]
    Timeout(Duration),
}

impl Error {
    /// Short label for metrics and condition reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube_api",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Timeout(_) => "timeout",
        }
    }
}

/// Operator-wide settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Defaults for children.
    pub workloads: WorkloadDefaults,
    /// Periodic resync of every pipeline (topics and storage drift is only seen this way).
    pub resync: Duration,
    /// How long external clean-up may take, from the deletion timestamp, before the finalizer is released
    /// anyway (with a Warning naming what was left).
    pub finalizer_timeout: Duration,
    /// The longest one reconcile may run; it is cancelled then and retried with backoff, so hung calls never
    /// hold all `max_concurrent_reconciles` slots.
    pub reconcile_timeout: Duration,
    /// Reconciles in flight at once per watch scope. Bounds memory and the load on the API server, the
    /// brokers and the databases when many pipelines change together (startup, a mass apply).
    pub max_concurrent_reconciles: u16,
}

/// Parts shared by the controllers of every watched namespace.
pub struct Shared {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder (events.k8s.io).
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub settings: Settings,
    /// The topic reconciler (Kafka admin API).
    pub topics: TopicAdmin,
    /// Database schema and policies.
    pub storage: Storage,
    /// PodMonitors for the Prometheus Operator.
    pub monitoring: crate::monitoring::Monitoring,
    /// Consecutive failures per object, for backoff.
    failures: Mutex<HashMap<ObjectRef<CryptoPipeline>, Backoff>>,
}

impl Shared {
    /// Build the shared context.
    pub fn new(client: Client, metrics: Arc<Metrics>, settings: Settings, instance: String) -> Arc<Self> {
        let reporter = Reporter { controller: "cryptoviz-operator".into(), instance: Some(instance) };
        Arc::new(Shared {
            recorder: Recorder::new(client.clone(), reporter),
            topics: TopicAdmin::new(metrics.clone()),
            storage: Storage::new(metrics.clone()),
            monitoring: crate::monitoring::Monitoring::new(),
            client,
            metrics,
            settings,
            failures: Mutex::new(HashMap::new()),
        })
    }
}

/// What one reconcile needs: the shared parts and the stores of one watch scope.
pub struct Context {
    /// Shared parts.
    pub shared: Arc<Shared>,
    /// Pipelines in scope (topic conflict detection).
    pub pipelines: Store<CryptoPipeline>,
    deployments: Store<Cached<Deployment>>,
    config_maps: Store<Cached<ConfigMap>>,
    services: Store<Cached<Service>>,
    pdbs: Store<Cached<PodDisruptionBudget>>,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Run the controller for one scope (a namespace, or the whole cluster with `None`) until shutdown.
pub async fn run(
    shared: Arc<Shared>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = shared.client.clone();
    let ns = namespace.as_deref();
    let owned = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));

    let (pipelines, pipelines_writer) = reflector::store();
    let pipeline_stream = watcher(api::<CryptoPipeline>(&client, ns), watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|p| p.managed_fields_mut().clear())
        .reflect(pipelines_writer)
        .applied_objects()
        // Our own status writes change neither generation nor annotations: they never trigger a reconcile.
        .predicate_filter(
            predicates::generation::<CryptoPipeline>.combine(predicates::annotations).combine(predicates::finalizers),
            Default::default(),
        );

    macro_rules! owned_stream {
        ($t:ty) => {{
            // Children are cached as compact JSON (see `cache.rs`): typed stores were most of our memory.
            let (store, writer) = reflector::store::<Cached<$t>>();
            let stream = watcher(api::<Cached<$t>>(&client, ns), owned.clone())
                .default_backoff()
                .reflect(writer)
                .touched_objects();
            (store, stream)
        }};
    }
    let (deployments, dep_stream) = owned_stream!(Deployment);
    let (config_maps, cm_stream) = owned_stream!(ConfigMap);
    let (services, svc_stream) = owned_stream!(Service);
    let (pdbs, pdb_stream) = owned_stream!(PodDisruptionBudget);

    let ctx = Arc::new(Context { shared, pipelines: pipelines.clone(), deployments, config_maps, services, pdbs });
    let config = controller::Config::default().concurrency(ctx.shared.settings.max_concurrent_reconciles);
    Controller::for_stream(pipeline_stream, pipelines)
        .with_config(config)
        .owns_stream(dep_stream)
        .owns_stream(cm_stream)
        .owns_stream(svc_stream)
        .owns_stream(pdb_stream)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// Reconcile one pipeline.
pub async fn reconcile(p: Arc<CryptoPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!("reconcile", namespace = %p.namespace().unwrap_or_default(), name = %p.name_any());
    async move {
        let m = &ctx.shared.metrics;
        let _timer = m.start_reconcile();
        m.pipelines.set(ctx.pipelines.len() as i64);
        let limit = ctx.shared.settings.reconcile_timeout;
        let result = tokio::time::timeout(limit, reconcile_inner(&p, &ctx)).await.unwrap_or(Err(Error::Timeout(limit)));
        let label = if result.is_ok() { "ok" } else { "error" };
        m.reconciliations.get_or_create(&crate::metrics::ResultLabels { result: label }).inc();
        result
    }
    .instrument(span)
    .await
}

fn pipeline_labels(p: &CryptoPipeline) -> crate::metrics::PipelineLabels {
    crate::metrics::PipelineLabels { namespace: p.namespace().unwrap_or_default(), pipeline: p.name_any() }
}

/// What a reconcile does with a pipeline, decided from its metadata and spec alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lifecycle {
    /// Being deleted: the finalizer's clean-up branch.
    Deleting,
    /// Paused: no writes but the status that says so.
    Paused,
    /// Everything is brought to the spec.
    Active,
}

fn lifecycle(p: &CryptoPipeline) -> Lifecycle {
    if p.metadata.deletion_timestamp.is_some() {
        Lifecycle::Deleting
    } else if p.is_paused() {
        Lifecycle::Paused
    } else {
        Lifecycle::Active
    }
}

/// The steps of one reconcile: the children in the cluster (desired → observed in the stores → diff → apply),
/// the external systems through their reconcilers, then the status from what was observed.
async fn reconcile_inner(p: &CryptoPipeline, ctx: &Context) -> Result<Action, Error> {
    let s = &ctx.shared;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    match lifecycle(p) {
        Lifecycle::Deleting => {
            s.metrics.pipeline_ready.remove(&pipeline_labels(p));
            return finalize(p, ctx).await;
        }
        Lifecycle::Paused => {
            s.metrics.pipeline_ready.get_or_create(&pipeline_labels(p)).set(0);
            patch_status_if_changed(p, ctx, status::paused(p, &now)).await?;
            return Ok(Action::await_change());
        }
        Lifecycle::Active => {}
    }
    sync_finalizer(p, ctx).await?;
    let desired = match spec_at_run_time(p, &s.settings.workloads) {
        Ok(d) => d,
        Err(problems) => return refuse_invalid(p, ctx, problems, &now).await,
    };
    apply_workloads(p, ctx, desired).await?;
    let external = reconcile_external(p, ctx).await;
    let polled_ready = external.polled_ready();
    report(p, ctx, external, &now).await?;
    Ok(next_action(ctx, p, polled_ready))
}

/// The children a spec renders to, or every problem that makes it invalid at run time (a field that does
/// not render, a cross-field rule CEL cannot check), each naming its field.
fn spec_at_run_time(p: &CryptoPipeline, d: &WorkloadDefaults) -> Result<workloads::Desired, Vec<String>> {
    let mut problems: Vec<String> = cryptoviz_crds::cross_field::check(p).iter().map(ToString::to_string).collect();
    match workloads::desired(p, d) {
        Ok(desired) if problems.is_empty() => Ok(desired),
        Ok(_) => Err(problems),
        Err(e) => {
            problems.insert(0, e.to_string());
            Err(problems)
        }
    }
}

/// A spec invalid at run time: nothing is applied; `Ready=False` with reason `InvalidSpec` naming the fields,
/// a Warning event when the problems are new, and the reconcile fails (logged and counted as `invalid_spec`).
async fn refuse_invalid(p: &CryptoPipeline, ctx: &Context, problems: Vec<String>, now: &Time) -> Result<Action, Error> {
    let new = status::invalid(p, &problems, now);
    let ready = |s: &CryptoPipelineStatus| {
        status::condition(s, ConditionType::Ready).map(|c| (c.reason.clone(), c.message.clone()))
    };
    if p.status.as_ref().and_then(ready) != ready(&new) {
        publish(ctx, p, EventType::Warning, KnownReason::InvalidSpec.as_str(), problems.join("; ")).await;
    }
    ctx.shared.metrics.pipeline_ready.get_or_create(&pipeline_labels(p)).set(0);
    patch_status_if_changed(p, ctx, new).await?;
    Err(Error::InvalidSpec(problems))
}

/// What the reconcilers of the systems outside the cluster found and did: Kafka, the database, and the
/// Prometheus Operator's PodMonitor.
pub struct External {
    /// Topics: the TopicsReady check, the names, and the changes made.
    pub topics: TopicsOutcome,
    /// The StorageReady check.
    pub storage: Check,
    /// The MonitoringReady check.
    pub monitoring: Check,
}

impl External {
    /// Whether the systems only seen by polling (topics, storage) are ready; the resync waits longer then.
    pub fn polled_ready(&self) -> bool {
        self.topics.check.is_true() && self.storage.is_true()
    }
}

/// Run the topic, storage and monitoring reconcilers. They never fail the reconcile: each reports a check.
async fn reconcile_external(p: &CryptoPipeline, ctx: &Context) -> External {
    let s = &ctx.shared;
    let claimed = claimed_elsewhere(p, &ctx.pipelines);
    let topics = s.topics.reconcile(p, &s.client, &claimed).await;
    let storage = s.storage.reconcile(p, &s.client).await.check;
    let monitoring = s.monitoring.reconcile(p, &s.client, &s.metrics).await;
    External { topics, storage, monitoring }
}

/// Events for the topic changes, the status from everything observed, the readiness metric, events on
/// transitions, and the status patch when it changed.
async fn report(p: &CryptoPipeline, ctx: &Context, external: External, now: &Time) -> Result<(), Error> {
    for (reason, notes) in group_changes(&external.topics.changes) {
        publish(ctx, p, EventType::Normal, reason, notes.join("; ")).await;
    }
    let ns = p.namespace().unwrap_or_default();
    let workers = Component::ALL
        .map(|c| {
            let live = ctx.deployments.get(&ObjectRef::new(&workloads::child_name(p, c)).within(&ns));
            status::deployment_check(p, c, live.map(|d| d.decode()).as_ref())
        })
        .to_vec();
    let new = desired_status(p, external, workers, now);
    let ready = status::condition_is(&new, ConditionType::Ready, ConditionStatus::True);
    ctx.shared.metrics.pipeline_ready.get_or_create(&pipeline_labels(p)).set(i64::from(ready));
    announce_transitions(p, ctx, &new).await;
    patch_status_if_changed(p, ctx, new).await
}

/// One event per kind of change ("created topic a; created topic b"), not one per topic, in first-seen order.
fn group_changes(changes: &[(String, String)]) -> Vec<(&str, Vec<&str>)> {
    let mut grouped: Vec<(&str, Vec<&str>)> = vec![];
    for (reason, note) in changes {
        match grouped.iter_mut().find(|(r, _)| r == reason) {
            Some((_, notes)) => notes.push(note),
            None => grouped.push((reason, vec![note])),
        }
    }
    grouped
}

/// The status from the external checks and the workers' checks (pure).
fn desired_status(p: &CryptoPipeline, external: External, workers: Vec<Check>, now: &Time) -> CryptoPipelineStatus {
    let mut checks = vec![external.topics.check, external.storage, external.monitoring];
    checks.extend(workers);
    status::compute(p, Observed { checks, topics: external.topics.status, previous: p.status.as_ref() }, now)
}

/// Resync at the configured period once the polled systems are ready; retry sooner (with backoff) until then.
fn next_action(ctx: &Context, p: &CryptoPipeline, polled_ready: bool) -> Action {
    if polled_ready {
        ctx.shared.failures.lock().unwrap().remove(&ObjectRef::from(p));
        Action::requeue(ctx.shared.settings.resync)
    } else {
        Action::requeue(backoff(ctx, p))
    }
}

/// Topic names that older pipelines (same brokers) already declare.
fn claimed_elsewhere(p: &CryptoPipeline, pipelines: &Store<CryptoPipeline>) -> Vec<String> {
    let me = (p.metadata.creation_timestamp.clone(), p.namespace(), p.name_any());
    pipelines
        .state()
        .iter()
        .filter(|o| o.uid() != p.uid() && o.spec.kafka.bootstrap_servers == p.spec.kafka.bootstrap_servers)
        .filter(|o| (o.metadata.creation_timestamp.clone(), o.namespace(), o.name_any()) < me)
        .flat_map(|o| TopicRole::ALL.map(|r| o.topic_name(r)))
        .collect()
}

async fn patch_status_if_changed(p: &CryptoPipeline, ctx: &Context, new: CryptoPipelineStatus) -> Result<(), Error> {
    if p.status.as_ref() == Some(&new) {
        return Ok(());
    }
    let api: Api<CryptoPipeline> = Api::namespaced(ctx.shared.client.clone(), &p.namespace().unwrap_or_default());
    let patch = serde_json::json!({"apiVersion": "cryptoviz.io/v1alpha1", "kind": "CryptoPipeline", "status": new});
    api.patch_status(&p.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    ctx.shared.metrics.write("CryptoPipeline", "patch_status");
    Ok(())
}

/// Events on significant transitions only: Ready flipping, or a concern's reason changing to a failure.
async fn announce_transitions(p: &CryptoPipeline, ctx: &Context, new: &CryptoPipelineStatus) {
    let old = p.status.clone().unwrap_or_default();
    for c in &new.conditions {
        // Only conditions of our own types, which is all we write.
        let Some(type_) = ConditionType::parse(&c.type_) else { continue };
        let before = status::condition(&old, type_);
        if before.is_some_and(|b| b.status == c.status && b.reason == c.reason) || type_ == ConditionType::Paused {
            continue;
        }
        let was_true = before.is_some_and(|b| b.status == ConditionStatus::True.as_str());
        match (type_, ConditionStatus::parse(&c.status)) {
            (ConditionType::Ready, Some(ConditionStatus::True)) => {
                publish(ctx, p, EventType::Normal, type_.as_str(), c.message.clone()).await
            }
            (_, Some(ConditionStatus::False))
                if (before.is_some() || type_ != ConditionType::Ready)
                    && warrants_warning(&Reason::parse(&c.reason), was_true) =>
            {
                publish(ctx, p, EventType::Warning, &c.reason, format!("{}: {}", c.type_, c.message)).await
            }
            _ => {}
        }
    }
}

/// Whether a concern turning False is worth a Warning. A rollout in progress never is; pods not available yet
/// only are when the concern was available before (a first start is not a failure, and a Warning per
/// component per new pipeline would bury the real ones, and cost the event recorder's cache memory).
fn warrants_warning(reason: &Reason, was_true: bool) -> bool {
    match reason {
        Reason::Known(
            KnownReason::DeploymentMissing | KnownReason::RolloutInProgress | KnownReason::RolloutPending,
        ) => false,
        Reason::Known(KnownReason::Unavailable) => was_true,
        _ => true,
    }
}

async fn publish(ctx: &Context, p: &CryptoPipeline, type_: EventType, reason: &str, note: String) {
    let ev = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    let reference: ObjectReference = p.object_ref(&());
    match ctx.shared.recorder.publish(&ev, &reference).await {
        Ok(()) => ctx.shared.metrics.write("Event", "event"),
        Err(e) => warn!(error = %e, "could not publish event"),
    }
}

/// Exponential backoff with jitter per object: about 1 s, 2 s, 4 s … capped at 5 minutes.
fn backoff(ctx: &Context, p: &CryptoPipeline) -> Duration {
    let mut f = ctx.shared.failures.lock().unwrap();
    f.entry(ObjectRef::from(p))
        .or_insert_with(|| Backoff::new(Duration::from_secs(1), Duration::from_secs(300)))
        .next_delay()
}

/// Retry failed reconciliations with per-object backoff.
pub fn error_policy(p: Arc<CryptoPipeline>, e: &Error, ctx: Arc<Context>) -> Action {
    warn!(namespace = %p.namespace().unwrap_or_default(), name = %p.name_any(), error = %e, "reconcile failed");
    ctx.shared.metrics.errors.get_or_create(&crate::metrics::ReasonLabels { reason: e.metric_label() }).inc();
    Action::requeue(backoff(&ctx, &p))
}

#[cfg(test)]
mod fixtures;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cryptoviz_crds::{CryptoPipeline, Phase};
    use http::StatusCode;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::runtime::{reflector, watcher};

    use super::fixtures::{self, Answer, Expect};
    use super::*;
    use crate::conditions::{KnownReason, Reason};

    fn pipeline() -> CryptoPipeline {
        let spec = serde_json::from_str(
            r#"{"symbols":["BTC"],"sources":[{"kind":"synthetic"}],"kafka":{"bootstrapServers":"k:9092"}}"#,
        )
        .unwrap();
        let mut p = CryptoPipeline::new("demo", spec);
        p.metadata.namespace = Some("ns".into());
        p.metadata.uid = Some("uid-1".into());
        p.metadata.generation = Some(1);
        p
    }

    /// What the reconcilers of Kafka, the database and monitoring report when all is well.
    fn external_ready(p: &CryptoPipeline) -> External {
        External {
            topics: TopicsOutcome {
                check: Check::ok(ConditionType::TopicsReady, KnownReason::Provisioned, "ok"),
                status: Some(cryptoviz_crds::TopicsStatus {
                    raw: p.topic_name(TopicRole::Raw),
                    stream: p.topic_name(TopicRole::Stream),
                    dlq: p.topic_name(TopicRole::Dlq),
                    owner_uid: p.uid(),
                }),
                changes: vec![],
            },
            storage: Check::ok(ConditionType::StorageReady, KnownReason::NotRequired, "none"),
            monitoring: Check::ok(ConditionType::MonitoringReady, KnownReason::NotRequired, "none"),
        }
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap())
    }

    const STATUS: &str = "/apis/cryptoviz.io/v1alpha1/namespaces/ns/cryptopipelines/demo/status";

    #[tokio::test]
    async fn a_new_pipeline_gets_its_children_applied_and_a_progressing_status() {
        let (ctx, server) = fixtures::context();
        let p = pipeline();
        let verifier = server.serve(vec![
            Expect::patch("/api/v1/namespaces/ns/configmaps/demo-config", Answer::Echo),
            Expect::patch("/apis/apps/v1/namespaces/ns/deployments/demo-scraper", Answer::Echo),
            Expect::patch("/apis/apps/v1/namespaces/ns/deployments/demo-gateway", Answer::Echo),
            Expect::patch("/api/v1/namespaces/ns/services/demo-gateway", Answer::Echo),
            Expect::patch(STATUS, Answer::Json(StatusCode::OK, serde_json::to_value(&p).unwrap())),
        ]);
        let desired = workloads::desired(&p, &ctx.shared.settings.workloads).unwrap();
        apply_workloads(&p, &ctx, desired).await.expect("children applied");
        report(&p, &ctx, external_ready(&p), &now()).await.expect("status patched");
        drop(ctx);
        let bodies = fixtures::verified(verifier).await;

        assert_eq!(bodies[1]["spec"]["template"]["spec"]["containers"][0]["image"], "worker:test");
        let status: CryptoPipelineStatus = serde_json::from_value(bodies[4]["status"].clone()).unwrap();
        assert_eq!(status.phase, Some(Phase::Progressing), "no Deployment is in the store yet");
        let ready = status::condition(&status, ConditionType::Ready).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "DeploymentMissing"));
        assert!(status::condition_is(&status, ConditionType::TopicsReady, ConditionStatus::True));
        assert_eq!(status.topics.unwrap().dlq, "ns.demo.dlq");
    }

    #[tokio::test]
    async fn a_refused_write_stops_the_reconcile_at_that_child() {
        let (ctx, server) = fixtures::context();
        let p = pipeline();
        let verifier = server.serve(vec![Expect::patch(
            "/api/v1/namespaces/ns/configmaps/demo-config",
            fixtures::status_failure(StatusCode::FORBIDDEN, "Forbidden"),
        )]);
        let desired = workloads::desired(&p, &ctx.shared.settings.workloads).unwrap();
        let err = apply_workloads(&p, &ctx, desired).await.expect_err("the apiserver refused the ConfigMap");
        assert_eq!(err.metric_label(), "kube_api");
        assert!(matches!(&err, Error::Kube(kube::Error::Api(s)) if s.code == 403), "{err}");
        drop(ctx);
        assert_eq!(fixtures::verified(verifier).await.len(), 1, "no Deployment is applied after the refusal");
    }

    #[tokio::test]
    async fn a_pipeline_becoming_ready_gets_an_event_and_a_ready_status_and_unchanged_children_no_writes() {
        let (mut ctx, server) = fixtures::context();
        let p = pipeline();
        // The store holds available Deployments for both wanted components, as the apiserver would report them.
        let desired = workloads::desired(&p, &ctx.shared.settings.workloads).unwrap();
        let (store, mut writer) = reflector::store::<crate::cache::Cached<Deployment>>();
        for (_, d) in &desired.deployments {
            let mut live = serde_json::to_value(d).unwrap();
            live["metadata"]["generation"] = 1.into();
            live["status"] = serde_json::json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                "availableReplicas": 1, "conditions": [{"type": "Available", "status": "True"}]});
            writer.apply_watcher_event(&watcher::Event::Apply(crate::cache::Cached::from_value(live).unwrap()));
        }
        ctx.deployments = store;
        let verifier = server.serve(vec![
            Expect::post("/apis/events.k8s.io/v1/namespaces/ns/events"),
            Expect::patch(STATUS, Answer::Json(StatusCode::OK, serde_json::to_value(&p).unwrap())),
        ]);
        for (_, d) in desired.deployments {
            apply_if_changed(&p, &ctx, &ctx.deployments, d).await.expect("nothing to write");
        }
        report(&p, &ctx, external_ready(&p), &now()).await.expect("status patched");
        drop(ctx);
        let bodies = fixtures::verified(verifier).await;

        assert_eq!(bodies[0]["reason"], "Ready");
        let status: CryptoPipelineStatus = serde_json::from_value(bodies[1]["status"].clone()).unwrap();
        assert_eq!(status.phase, Some(Phase::Ready));
        assert!(status::condition_is(&status, ConditionType::Ready, ConditionStatus::True));
    }

    #[test]
    fn lifecycle_puts_deletion_before_pause() {
        let mut p = pipeline();
        assert_eq!(lifecycle(&p), Lifecycle::Active);
        p.spec.paused = true;
        assert_eq!(lifecycle(&p), Lifecycle::Paused);
        p.metadata.deletion_timestamp = Some(now());
        assert_eq!(lifecycle(&p), Lifecycle::Deleting, "a paused pipeline is still cleaned up when deleted");
    }

    #[test]
    fn topic_changes_become_one_event_per_reason() {
        let changes = [("TopicCreated", "a"), ("PartitionsIncreased", "b"), ("TopicCreated", "c")]
            .map(|(r, n)| (r.to_string(), n.to_string()));
        assert_eq!(group_changes(&changes), vec![("TopicCreated", vec!["a", "c"]), ("PartitionsIncreased", vec!["b"])]);
    }

    #[tokio::test]
    async fn the_resync_waits_only_once_the_polled_systems_are_ready() {
        let (ctx, _server) = fixtures::context();
        let p = pipeline();
        assert_eq!(next_action(&ctx, &p, true), Action::requeue(Duration::from_secs(300)));
        assert!(next_action(&ctx, &p, false) != Action::requeue(Duration::from_secs(300)));
    }

    #[test]
    fn warnings_for_failures_and_regressions_not_for_a_first_start() {
        let w = |r: KnownReason, was_true| warrants_warning(&r.into(), was_true);
        assert!(!w(KnownReason::Unavailable, false), "pods of a new Deployment are not available yet");
        assert!(w(KnownReason::Unavailable, true), "pods that were available are gone");
        assert!(!w(KnownReason::RolloutInProgress, true));
        assert!(!w(KnownReason::DeploymentMissing, false));
        assert!(w(KnownReason::ProgressDeadlineExceeded, false));
        assert!(w(KnownReason::TopicConflict, false));
        assert!(warrants_warning(&Reason::Other("MinimumReplicasUnavailable".into()), false));
    }
}
