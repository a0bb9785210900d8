//! The finalizer: added while a deletion policy is `Delete`, and the clean-up branch that removes external
//! state (topics, schema) before releasing it.

use cryptoviz_crds::{CryptoPipeline, DeletionPolicy};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::{Context, Error, FINALIZER, publish};

fn needs_finalizer(p: &CryptoPipeline) -> bool {
    p.spec.kafka.deletion_policy == DeletionPolicy::Delete
        || p.spec.timescale.as_ref().is_some_and(|t| t.deletion_policy == DeletionPolicy::Delete)
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

/// The deletion branch: clean external state per policy, then release the finalizer. A system that stays
/// unreachable longer than `finalizer_timeout` never blocks deletion: the finalizer is released with a Warning.
pub(super) async fn finalize(p: &CryptoPipeline, ctx: &Context) -> Result<Action, Error> {
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
