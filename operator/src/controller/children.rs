//! The pipeline's children in the cluster (ConfigMap, Deployments, Service, PDBs): each desired object is
//! compared with the live one in its reflector store and applied only when it differs; owned children the spec
//! no longer wants are deleted.

use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::info;

use super::{Context, Error};
use crate::cache::Cached;
use crate::workloads::{self, Component, FIELD_MANAGER};
use cryptoviz_crds::CryptoPipeline;

/// Apply the desired children that differ from the live ones in the stores, and delete the owned ones the
/// spec no longer wants. Stops at the first refused write.
pub(super) async fn apply_workloads(
    p: &CryptoPipeline,
    ctx: &Context,
    desired: workloads::Desired,
) -> Result<(), Error> {
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

/// Server-side apply `desired` unless the live object (from the store) already has every field it sets.
pub(super) async fn apply_if_changed<K>(
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
