//! How the operator keeps the children it watches in memory: [`Cached`], an object's identity plus the rest as
//! compact JSON.
//!
//! A reflector store of typed `Deployment`s costs ~14 KiB per object (k8s-openapi structs are mostly inline
//! `Option`s and `BTreeMap` nodes), the bulk of the operator's memory at 1,000 pipelines. The reconciler only
//! ever compares a child with its desired JSON, reads a Deployment's status, and checks owner references, so
//! the store holds what the apiserver sent (minus `managedFields`) as bytes, and decodes on demand.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A watched object of kind `K`: the metadata the controller runtime needs (name, namespace, uid,
/// resourceVersion, generation, owner references, deletion timestamp) and the whole object as JSON.
pub struct Cached<K> {
    meta: ObjectMeta,
    json: Box<[u8]>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Cached<K> {
    fn clone(&self) -> Self {
        Cached { meta: self.meta.clone(), json: self.json.clone(), kind: PhantomData }
    }
}

impl<K> fmt::Debug for Cached<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cached").field("meta", &self.meta).field("bytes", &self.json.len()).finish()
    }
}

impl<K: DeserializeOwned> Cached<K> {
    /// The object as JSON, for comparing with a desired object.
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).expect("cached from valid JSON")
    }

    /// The typed object.
    pub fn decode(&self) -> K {
        serde_json::from_slice(&self.json).expect("cached from a valid object")
    }
}

impl<K: Resource<DynamicType = ()>> Cached<K> {
    /// Cache an object from its JSON, dropping `managedFields` (never read here, and most of an object's size).
    pub fn from_value(mut v: Value) -> Result<Self, serde_json::Error> {
        let Some(obj) = v.as_object_mut() else { return Err(serde_json::Error::custom("not an object")) };
        // List items come without apiVersion and kind; the desired objects compared with this JSON carry them.
        obj.entry("apiVersion").or_insert_with(|| K::api_version(&()).into());
        obj.entry("kind").or_insert_with(|| K::kind(&()).into());
        let metadata = v.get_mut("metadata").and_then(Value::as_object_mut);
        let Some(metadata) = metadata else { return Err(serde_json::Error::custom("object without metadata")) };
        metadata.remove("managedFields");
        let full = ObjectMeta::deserialize(&v["metadata"])?;
        // Only what the runtime and the reconciler read from the metadata; the rest stays in the JSON.
        let meta = ObjectMeta {
            name: full.name,
            namespace: full.namespace,
            uid: full.uid,
            resource_version: full.resource_version,
            generation: full.generation,
            owner_references: full.owner_references,
            deletion_timestamp: full.deletion_timestamp,
            ..ObjectMeta::default()
        };
        Ok(Cached { meta, json: serde_json::to_vec(&v)?.into_boxed_slice(), kind: PhantomData })
    }
}

impl<K> Cached<K> {
    /// Size of the cached JSON, in bytes.
    pub fn len(&self) -> usize {
        self.json.len()
    }

    /// Whether the cached JSON is empty (never, for an object from the apiserver).
    pub fn is_empty(&self) -> bool {
        self.json.is_empty()
    }
}

impl<'de, K: Resource<DynamicType = ()>> Deserialize<'de> for Cached<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Cached::from_value(Value::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// Same kind, group, version and plural as `K`: an `Api<Cached<K>>` lists and watches `K`'s endpoint.
impl<K: Resource<DynamicType = ()>> Resource for Cached<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn api_version(dt: &()) -> Cow<'_, str> {
        K::api_version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::ResourceExt;
    use serde_json::json;

    use super::*;

    fn live() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "p-scraper", "namespace": "ns", "uid": "u1", "resourceVersion": "42", "generation": 3,
                "labels": {"app.kubernetes.io/name": "cryptoviz"},
                "ownerReferences": [{"apiVersion": "cryptoviz.io/v1alpha1", "kind": "CryptoPipeline", "name": "p",
                                     "uid": "owner", "controller": true}],
                "managedFields": [{"manager": "cryptoviz-operator", "operation": "Apply", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
            "status": {"observedGeneration": 3, "replicas": 2}
        })
    }

    #[test]
    fn keeps_identity_and_owners_drops_managed_fields_and_decodes_back() {
        let c: Cached<Deployment> = serde_json::from_value(live()).unwrap();
        assert_eq!(c.name_any(), "p-scraper");
        assert_eq!(c.namespace().as_deref(), Some("ns"));
        assert_eq!(c.resource_version().as_deref(), Some("42"));
        assert_eq!(c.meta().generation, Some(3));
        assert_eq!(c.owner_references()[0].uid, "owner");
        // Labels live in the JSON only.
        assert!(c.meta().labels.is_none());
        let v = c.value();
        assert!(v["metadata"].get("managedFields").is_none());
        assert_eq!(v["metadata"]["labels"]["app.kubernetes.io/name"], "cryptoviz");
        let d = c.decode();
        assert_eq!(d.spec.unwrap().replicas, Some(2));
        assert_eq!(d.status.unwrap().observed_generation, Some(3));
        assert_eq!(Cached::<Deployment>::plural(&()), "deployments");
        assert_eq!(Cached::<Deployment>::api_version(&()), "apps/v1");
    }

    #[test]
    fn list_items_get_their_api_version_and_kind_back() {
        let mut item = live();
        item.as_object_mut().unwrap().remove("apiVersion");
        item.as_object_mut().unwrap().remove("kind");
        let c: Cached<Deployment> = serde_json::from_value(item).unwrap();
        assert_eq!(c.value()["apiVersion"], "apps/v1");
        assert_eq!(c.value()["kind"], "Deployment");
    }

    #[test]
    fn refuses_an_object_without_metadata() {
        assert!(serde_json::from_value::<Cached<Deployment>>(json!({"kind": "Deployment"})).is_err());
    }
}
