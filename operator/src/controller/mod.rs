//! The CryptoPipeline controller: wiring, `reconcile()`, `error_policy()` and the finalizer.
//!
//! Reconcile is desired → observed → diff → apply: children are compared with the live objects held in
//! reflector stores (no reads per reconcile) and applied only when they differ; the status is patched only
//! when it changed; our own status writes do not trigger reconciles (generation/annotation predicate).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cryptoviz_crds::{CryptoPipeline, CryptoPipelineStatus, DeletionPolicy, TopicRole};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, info, info_span, warn};

use crate::cache::Cached;
use crate::conditions::{ConditionStatus, ConditionType, KnownReason, Reason};
use crate::metrics::Metrics;
use crate::status::{self, Check, Observed};
use crate::storage::Storage;
use crate::topics::{TopicAdmin, TopicsOutcome};
use crate::workloads::{self, Component, FIELD_MANAGER, MANAGED_BY, WorkloadDefaults};
use cryptoviz_runtime::backoff::Backoff;

/// Finalizer guarding external clean-up (topics, schema) when a deletion policy is `Delete`.
pub const FINALIZER: &str = "cryptoviz.io/cleanup";

/// Errors of one reconciliation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The spec cannot be rendered (only possible for specs the schema did not check).
    #[error("invalid spec: {0}")]
    Render(#[from] cryptoviz_crds::config::RenderError),
    /// External clean-up failed and will be retried.
    #[error("clean-up of {0} failed: {1}")]
    Cleanup(&'static str, String),
}

impl Error {
    /// Short label for metrics and condition reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube_api",
            Error::Render(_) => "invalid_spec",
            Error::Cleanup(..) => "cleanup",
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
    /// How long external clean-up may fail before the finalizer is released anyway.
    pub finalizer_timeout: Duration,
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
        let result = reconcile_inner(&p, &ctx).await;
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
    apply_workloads(p, ctx, workloads::desired(p, &s.settings.workloads)?).await?;
    let external = reconcile_external(p, ctx).await;
    let polled_ready = external.polled_ready();
    report(p, ctx, external, &now).await?;
    Ok(next_action(ctx, p, polled_ready))
}

/// Apply the desired children that differ from the live ones in the stores, and delete the owned ones the
/// spec no longer wants. Stops at the first refused write.
async fn apply_workloads(p: &CryptoPipeline, ctx: &Context, desired: workloads::Desired) -> Result<(), Error> {
    apply_if_changed(p, ctx, &ctx.config_maps, desired.config_map).await?;
    for (_, d) in desired.deployments.iter() {
        apply_if_changed(p, ctx, &ctx.deployments, d.clone()).await?;
    }
    match desired.service {
        Some(svc) => apply_if_changed(p, ctx, &ctx.services, svc).await?,
        None => delete_if_present(p, ctx, &ctx.services, &workloads::child_name(p, Component::Gateway)).await?,
    }
    for c in Component::ALL {
        let name = workloads::child_name(p, c);
        if !desired.deployments.iter().any(|(dc, _)| *dc == c) {
            delete_if_present(p, ctx, &ctx.deployments, &name).await?;
        }
        match desired.pdbs.iter().find(|(pc, _)| *pc == c) {
            Some((_, pdb)) => apply_if_changed(p, ctx, &ctx.pdbs, pdb.clone()).await?,
            None => delete_if_present(p, ctx, &ctx.pdbs, &name).await?,
        }
    }
    Ok(())
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

/// Server-side apply `desired` unless the live object (from the store) already has every field it sets.
async fn apply_if_changed<K>(
    p: &CryptoPipeline,
    ctx: &Context,
    store: &Store<Cached<K>>,
    desired: K,
) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let ns = p.namespace().unwrap_or_default();
    let name = desired.name_any();
    let want = serde_json::to_value(&desired).expect("serialisable");
    if let Some(live) = store.get(&ObjectRef::new(&name).within(&ns))
        && workloads::is_subset(&want, &live.value())
    {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.shared.client.clone(), &ns);
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&want)).await?;
    ctx.shared.metrics.write(kind_label::<K>(), "apply");
    info!(kind = %K::kind(&()), child = %name, "applied");
    Ok(())
}

async fn delete_if_present<K>(
    p: &CryptoPipeline,
    ctx: &Context,
    store: &Store<Cached<K>>,
    name: &str,
) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let ns = p.namespace().unwrap_or_default();
    let Some(live) = store.get(&ObjectRef::new(name).within(&ns)) else { return Ok(()) };
    // Only delete what this pipeline owns.
    if !live.owner_references().iter().any(|o| Some(&o.uid) == p.metadata.uid.as_ref()) {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.shared.client.clone(), &ns);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    ctx.shared.metrics.write(kind_label::<K>(), "delete");
    info!(kind = %K::kind(&()), child = %name, "deleted: no longer wanted by the spec");
    Ok(())
}

fn kind_label<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "Deployment" => "Deployment",
        "ConfigMap" => "ConfigMap",
        "Service" => "Service",
        "PodDisruptionBudget" => "PodDisruptionBudget",
        _ => "other",
    }
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

fn needs_finalizer(p: &CryptoPipeline) -> bool {
    p.spec.kafka.deletion_policy == DeletionPolicy::Delete
        || p.spec.timescale.as_ref().is_some_and(|t| t.deletion_policy == DeletionPolicy::Delete)
}

/// Add the finalizer when a deletion policy is Delete, remove it when none is (nothing to clean up then,
/// and a finalizer nobody needs only risks hanging a namespace's deletion).
async fn sync_finalizer(p: &CryptoPipeline, ctx: &Context) -> Result<(), Error> {
    let has = p.finalizers().iter().any(|f| f == FINALIZER);
    let want = needs_finalizer(p);
    if has == want {
        return Ok(());
    }
    let mut finalizers: Vec<String> = p.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    if want {
        finalizers.push(FINALIZER.into());
    }
    patch_finalizers(p, ctx, finalizers).await
}

async fn patch_finalizers(p: &CryptoPipeline, ctx: &Context, finalizers: Vec<String>) -> Result<(), Error> {
    let api: Api<CryptoPipeline> = Api::namespaced(ctx.shared.client.clone(), &p.namespace().unwrap_or_default());
    // resourceVersion makes this an optimistic update: another writer's finalizer change is never lost.
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": p.resource_version()}});
    api.patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    ctx.shared.metrics.write("CryptoPipeline", "patch_finalizers");
    Ok(())
}

/// The deletion branch: clean external state per policy, then release the finalizer. A system that stays
/// unreachable longer than `finalizer_timeout` never blocks deletion: the finalizer is released with a Warning.
async fn finalize(p: &CryptoPipeline, ctx: &Context) -> Result<Action, Error> {
    if !p.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let s = &ctx.shared;
    let mut failure: Option<Error> = None;
    if p.spec.kafka.deletion_policy == DeletionPolicy::Delete {
        if let Err(e) = s.topics.cleanup(p, &s.client).await {
            failure = Some(Error::Cleanup("topics", e.to_string()));
        } else {
            publish(ctx, p, EventType::Normal, "TopicsDeleted", "deletionPolicy Delete: topics removed".into()).await;
        }
    }
    if failure.is_none() && p.spec.timescale.as_ref().is_some_and(|t| t.deletion_policy == DeletionPolicy::Delete) {
        if let Err(e) = s.storage.cleanup(p, &s.client).await {
            failure = Some(Error::Cleanup("storage", e.to_string()));
        } else {
            publish(
                ctx,
                p,
                EventType::Normal,
                "SchemaDropped",
                "deletionPolicy Delete: database schema dropped".into(),
            )
            .await;
        }
    }
    if let Some(e) = failure {
        let deleting_for = p
            .metadata
            .deletion_timestamp
            .as_ref()
            .map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0).unsigned_abs())
            .unwrap_or_default();
        if deleting_for < s.settings.finalizer_timeout {
            return Err(e);
        }
        publish(
            ctx,
            p,
            EventType::Warning,
            "CleanupAbandoned",
            format!(
                "{e}; giving up after {:?} so the deletion is not blocked: clean up by hand",
                s.settings.finalizer_timeout
            ),
        )
        .await;
    }
    let rest: Vec<String> = p.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    patch_finalizers(p, ctx, rest).await?;
    Ok(Action::await_change())
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
mod tests {
    use super::warrants_warning;
    use crate::conditions::{KnownReason, Reason};

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
