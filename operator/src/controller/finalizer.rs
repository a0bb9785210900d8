//! The finalizer: added while a deletion policy is `Delete`, and the clean-up branch that removes what the
//! pipeline owns before releasing it, in order: the worker Deployments (waiting until their pods are gone, so
//! no producer re-creates a topic and no consumer holds a lock on the schema), then the topics `status.topics`
//! records as this pipeline's, then the schema carrying its owner mark.
//!
//! Every step is bounded by what is left of the finalizer timeout (counted from the deletion timestamp). What
//! cannot be removed in that time, or never can be (a Secret deleted with its namespace), is named in a
//! `CleanupAbandoned` Warning event and the finalizer is released, so a deletion never hangs. The annotation
//! `cryptoviz.io/skip-cleanup: "true"` skips the clean-up.

use std::time::Duration;

use cryptoviz_crds::{CryptoPipeline, DeletionPolicy, SKIP_CLEANUP_ANNOTATION};
use cryptoviz_runtime::storage::Dropped;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::warn;

use super::{Context, Error, FINALIZER, backoff, publish};
use crate::storage::StorageError;
use crate::topics::{TopicsError, owned_topics};
use crate::workloads::{self, Component};

/// How often the finalizer looks again while the workers' pods terminate.
const POD_POLL: Duration = Duration::from_secs(1);

fn topics_policy(p: &CryptoPipeline) -> bool {
    p.spec.kafka.deletion_policy == DeletionPolicy::Delete
}

fn schema_policy(p: &CryptoPipeline) -> bool {
    p.spec.timescale.as_ref().is_some_and(|t| t.deletion_policy == DeletionPolicy::Delete)
}

fn needs_finalizer(p: &CryptoPipeline) -> bool {
    topics_policy(p) || schema_policy(p)
}

fn skip_cleanup(p: &CryptoPipeline) -> bool {
    p.annotations().get(SKIP_CLEANUP_ANNOTATION).is_some_and(|v| v == "true")
}

/// Add the finalizer when a deletion policy is Delete, remove it when none is (nothing to clean up then,
/// and a finalizer nobody needs only risks hanging a namespace's deletion).
pub(super) async fn sync_finalizer(p: &CryptoPipeline, ctx: &Context) -> Result<(), Error> {
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

/// One clean-up step's result.
#[derive(Debug)]
enum Step {
    /// Done (or nothing to do).
    Done,
    /// Failed; worth retrying while time is left.
    Retry(String),
    /// Failed in a way no retry mends (the Secret is gone, the spec does not render).
    Never(String),
}

/// What is left after a pass, and whether to wait, retry or give up (pure).
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Everything is clean: release the finalizer.
    Release,
    /// Retry after this long.
    Retry(Duration),
    /// Give up: release the finalizer with a Warning naming what is left.
    Abandon(Vec<String>),
}

fn verdict(left: Vec<(String, bool)>, remaining: Duration, retry_in: Duration) -> Verdict {
    if left.is_empty() {
        return Verdict::Release;
    }
    if remaining.is_zero() || left.iter().all(|(_, never)| *never) {
        return Verdict::Abandon(left.into_iter().map(|(what, _)| what).collect());
    }
    Verdict::Retry(retry_in.min(remaining).max(Duration::from_millis(100)))
}

/// What is left of the finalizer timeout.
fn remaining(p: &CryptoPipeline, timeout: Duration) -> Duration {
    let deleting_for = p
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0).unsigned_abs())
        .unwrap_or_default();
    timeout.saturating_sub(deleting_for)
}

/// The deletion branch: stop the workers, remove the owned topics and schema, release the finalizer.
pub(super) async fn finalize(p: &CryptoPipeline, ctx: &Context) -> Result<Action, Error> {
    if !p.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    if skip_cleanup(p) {
        let note = format!("annotation {SKIP_CLEANUP_ANNOTATION}=true: topics and schema left as they are");
        publish(ctx, p, EventType::Normal, "CleanupSkipped", note).await;
        return release(p, ctx).await;
    }
    let budget = remaining(p, ctx.shared.settings.finalizer_timeout);
    let bounded = |what: String| move |_| Step::Retry(format!("{what}: not done within the finalizer timeout"));
    let mut left: Vec<(String, bool)> = vec![];
    // 1. The workers: nothing may write to the topics or hold the schema while they are removed.
    let pods = stop_workers(p, ctx).await?;
    if pods > 0 {
        if !budget.is_zero() {
            return Ok(Action::requeue(POD_POLL.min(budget)));
        }
        left.push((format!("{pods} worker pod(s) still running"), false));
    }
    // 2. The topics this pipeline owns.
    let topics = owned_topics(p);
    if topics_policy(p) && !topics.is_empty() {
        let what = format!("topics {}", topics.join(", "));
        let step = match tokio::time::timeout(budget, ctx.shared.topics.cleanup(p, &ctx.shared.client)).await {
            Ok(Ok(())) => {
                publish(ctx, p, EventType::Normal, "TopicsDeleted", format!("deletionPolicy Delete: deleted {what}"))
                    .await;
                Step::Done
            }
            Ok(Err(e @ (TopicsError::Secret(_) | TopicsError::Config(_)))) => Step::Never(e.to_string()),
            Ok(Err(e)) => Step::Retry(e.to_string()),
            Err(e) => bounded(what.clone())(e),
        };
        note(&mut left, what, step);
    }
    // 3. The schema, when it carries this pipeline's mark.
    if schema_policy(p) {
        let what = format!("schema {}", p.schema_name());
        let step = match tokio::time::timeout(budget, ctx.shared.storage.cleanup(p, &ctx.shared.client)).await {
            Ok(Ok(dropped)) => {
                announce_drop(p, ctx, &what, dropped).await;
                Step::Done
            }
            Ok(Err(e @ StorageError::Secret(_))) => Step::Never(e.to_string()),
            Ok(Err(e)) => Step::Retry(e.to_string()),
            Err(e) => bounded(what.clone())(e),
        };
        note(&mut left, what, step);
    }
    match verdict(left, budget, backoff(ctx, p)) {
        Verdict::Release => release(p, ctx).await,
        Verdict::Retry(after) => Ok(Action::requeue(after)),
        Verdict::Abandon(left) => {
            let note = format!(
                "left behind: {}; clean up by hand (finalizer released so the deletion is not blocked, timeout {:?})",
                left.join("; "),
                ctx.shared.settings.finalizer_timeout
            );
            publish(ctx, p, EventType::Warning, "CleanupAbandoned", note).await;
            release(p, ctx).await
        }
    }
}

fn note(left: &mut Vec<(String, bool)>, what: String, step: Step) {
    match step {
        Step::Done => {}
        Step::Retry(why) => {
            warn!(%what, %why, "clean-up failed, will retry while the finalizer timeout allows");
            left.push((format!("{what} ({why})"), false));
        }
        Step::Never(why) => left.push((format!("{what} ({why})"), true)),
    }
}

async fn announce_drop(p: &CryptoPipeline, ctx: &Context, what: &str, dropped: Dropped) {
    let (type_, reason, note) = match dropped {
        Dropped::Dropped => (EventType::Normal, "SchemaDropped", format!("deletionPolicy Delete: dropped {what}")),
        Dropped::Absent => return,
        Dropped::NotOurs(mark) => (
            EventType::Warning,
            "SchemaKept",
            format!(
                "{what} kept: it is not marked as this pipeline's ({})",
                mark.unwrap_or_else(|| "no owner mark".into())
            ),
        ),
    };
    publish(ctx, p, type_, reason, note).await;
}

async fn release(p: &CryptoPipeline, ctx: &Context) -> Result<Action, Error> {
    let rest: Vec<String> = p.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    patch_finalizers(p, ctx, rest).await?;
    ctx.shared.failures.lock().unwrap().remove(&kube::runtime::reflector::ObjectRef::from(p));
    Ok(Action::await_change())
}

/// Delete the worker Deployments (background propagation: their ReplicaSets and pods follow) and count the
/// pipeline's pods still present. Deployments already gone are fine.
async fn stop_workers(p: &CryptoPipeline, ctx: &Context) -> Result<usize, Error> {
    let ns = p.namespace().unwrap_or_default();
    let client = &ctx.shared.client;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    for c in Component::ALL {
        let name = workloads::child_name(p, c);
        match deployments.delete(&name, &DeleteParams::background()).await {
            Ok(_) => ctx.shared.metrics.write("Deployment", "delete"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let selector =
        workloads::selector_labels(p, None).into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    Ok(pods.list_metadata(&ListParams::default().labels(&selector)).await?.items.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn clean_releases_failures_retry_while_time_is_left_then_are_abandoned() {
        assert_eq!(verdict(vec![], Duration::ZERO, S), Verdict::Release);
        let failed = || vec![("topics a".to_string(), false), ("schema s".to_string(), true)];
        assert_eq!(verdict(failed(), Duration::from_secs(60), S), Verdict::Retry(S));
        assert_eq!(verdict(failed(), Duration::from_millis(300), S), Verdict::Retry(Duration::from_millis(300)));
        assert_eq!(verdict(failed(), Duration::ZERO, S), Verdict::Abandon(vec!["topics a".into(), "schema s".into()]));
    }

    #[test]
    fn what_no_retry_can_mend_is_abandoned_at_once() {
        let never = vec![("schema s (Secret db does not exist)".to_string(), true)];
        assert_eq!(
            verdict(never, Duration::from_secs(60), S),
            Verdict::Abandon(vec!["schema s (Secret db does not exist)".into()])
        );
    }
}
