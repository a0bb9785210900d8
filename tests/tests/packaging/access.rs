//! The chart's ClusterRoles for people: aggregated into the built-in `view`, `edit` and `admin`, so a
//! namespace's editors manage its pipelines and its viewers read them. Proven by impersonation.

use std::time::Duration;

use cryptoviz_crds::CryptoPipeline;
use cryptoviz_tests::operator::{install_crd, namespace, pipeline};
use cryptoviz_tests::{TestEnv, unique, wait_for};
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::support::*;

/// The chart's aggregated ClusterRoles: `-view` into view, edit and admin (read), `-edit` into edit and
/// admin (write, never the status); none with `rbac.aggregateClusterRoles=false`.
#[test]
fn aggregated_cluster_roles_render_for_view_edit_and_admin() {
    let objs = docs(&helm_template(&chart(), "cryptoviz-system", &[]));
    let label =
        |o: &Value, to: &str| o["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{to}")] == "true";
    let roles: Vec<&Value> = of_kind(&objs, "ClusterRole")
        .into_iter()
        .filter(|r| ["view", "edit", "admin"].iter().any(|to| label(r, to)))
        .collect();
    assert_eq!(roles.len(), 2, "{roles:?}");
    let view = roles.iter().find(|r| r["metadata"]["name"].as_str().unwrap().ends_with("-view")).unwrap();
    let edit = roles.iter().find(|r| r["metadata"]["name"].as_str().unwrap().ends_with("-edit")).unwrap();
    assert!(label(view, "view") && label(view, "edit") && label(view, "admin"));
    assert!(!label(edit, "view") && label(edit, "edit") && label(edit, "admin"));
    assert_eq!(
        view["rules"],
        json!([{"apiGroups": ["cryptoviz.io"], "resources": ["cryptopipelines", "cryptopipelines/status"],
                "verbs": ["get", "list", "watch"]}])
    );
    assert_eq!(
        edit["rules"],
        json!([{"apiGroups": ["cryptoviz.io"], "resources": ["cryptopipelines"],
                "verbs": ["create", "update", "patch", "delete", "deletecollection"]}])
    );
    // The same roles in watch-namespace mode (they grant people, not the operator).
    let wn = docs(&helm_template(&chart(), "cryptoviz-system", &["--set", "watchNamespaces[0]=markets"]));
    assert_eq!(of_kind(&wn, "ClusterRole").len(), 2);
    let off = docs(&helm_template(&chart(), "cryptoviz-system", &["--set", "rbac.aggregateClusterRoles=false"]));
    assert!(of_kind(&off, "ClusterRole").iter().all(|r| !label(r, "view") && !label(r, "edit") && !label(r, "admin")));
    assert_eq!(of_kind(&off, "ClusterRole").len(), 1, "only the operator's own ClusterRole");

    // The kustomize base ships the same two roles.
    let base = docs(&std::fs::read_to_string(cryptoviz_tests::repo_root().join("manifests/base/rbac.yaml")).unwrap());
    for (suffix, want) in [("-view", view), ("-edit", edit)] {
        let b = base
            .iter()
            .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == format!("cryptoviz-operator{suffix}"))
            .unwrap_or_else(|| panic!("manifests/base/rbac.yaml lacks cryptoviz-operator{suffix}"));
        assert_eq!(b["rules"], want["rules"], "{suffix}");
        for to in ["view", "edit", "admin"] {
            assert_eq!(label(b, to), label(want, to), "{suffix}: aggregate-to-{to}");
        }
    }
}

/// Bind `user` to the built-in ClusterRole `role` in `ns`.
async fn bind(client: &Client, ns: &str, user: &str, role: &str) {
    let rb: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{role}-{user}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), ns).create(&PostParams::default(), &rb).await.unwrap();
}

/// Whether an impersonated call was refused by the authorizer (403).
fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> bool {
    match r {
        Ok(_) => false,
        Err(kube::Error::Api(s)) if s.code == 403 => true,
        Err(e) => panic!("expected 403 or success, got {e}"),
    }
}

/// After `helm install`, a user bound only to the built-in `edit` in a namespace creates, edits and deletes
/// a CryptoPipeline there (but not its status); `admin` may create too; `view` reads but cannot create,
/// edit or delete. Every call goes through the apiserver's authorizer by impersonation.
#[tokio::test]
async fn a_namespace_editor_manages_pipelines_and_a_viewer_only_reads() {
    let client = TestEnv::get().kube_client().await;
    install_crd(&client).await;
    let release_ns = namespace(&client, "pkg-rel").await;
    let ns = namespace(&client, "pkg-agg").await;
    let inst = Install::new(&release_ns, &["--set", "replicaCount=0,tests.enabled=false"]);
    // The clusterrole-aggregation controller fills the built-in roles asynchronously.
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let release = inst.release.clone();
    for builtin in ["view", "edit", "admin"] {
        let want = format!("{release}-cryptoviz-operator-{}", if builtin == "view" { "view" } else { "edit" });
        wait_for(&format!("`{builtin}` to aggregate {want}"), Duration::from_secs(60), || async {
            let r = roles.get(builtin).await.ok()?;
            let rules = r.rules.unwrap_or_default();
            rules
                .iter()
                .any(|r| {
                    r.api_groups.as_deref().unwrap_or_default().contains(&"cryptoviz.io".to_string())
                        && r.verbs.contains(&if builtin == "view" { "get" } else { "create" }.to_string())
                })
                .then_some(())
        })
        .await;
    }
    let (editor, admin, viewer) = (unique("editor"), unique("admin"), unique("viewer"));
    bind(&client, &ns, &editor, "edit").await;
    bind(&client, &ns, &admin, "admin").await;
    bind(&client, &ns, &viewer, "view").await;
    let as_editor: Api<CryptoPipeline> = Api::namespaced(impersonating(&editor).await, &ns);
    let as_admin: Api<CryptoPipeline> = Api::namespaced(impersonating(&admin).await, &ns);
    let as_viewer: Api<CryptoPipeline> = Api::namespaced(impersonating(&viewer).await, &ns);
    // Paused: whichever operator runs on the shared cluster leaves it alone.
    let p = pipeline("tenant", json!({"paused": true}));
    let label = Patch::Merge(json!({"metadata": {"labels": {"team": "markets"}}}));

    as_editor.create(&PostParams::default(), &p).await.expect("edit may create a CryptoPipeline");
    as_editor.patch("tenant", &PatchParams::default(), &label).await.expect("edit may patch it");
    assert_eq!(as_editor.get("tenant").await.unwrap().metadata.labels.unwrap()["team"], "markets");
    let status = Patch::Merge(json!({"status": {"phase": "Ready"}}));
    assert!(forbidden(as_editor.patch_status("tenant", &PatchParams::default(), &status).await), "edit: no status");
    let dry = PostParams { dry_run: true, ..Default::default() };
    as_admin.create(&dry, &pipeline("by-admin", json!({"paused": true}))).await.expect("admin may create");

    assert_eq!(as_viewer.get("tenant").await.expect("view may get").metadata.name.as_deref(), Some("tenant"));
    assert_eq!(as_viewer.list(&Default::default()).await.expect("view may list").items.len(), 1);
    assert!(forbidden(as_viewer.create(&dry, &pipeline("by-viewer", json!({"paused": true}))).await), "view: create");
    assert!(forbidden(as_viewer.patch("tenant", &PatchParams::default(), &label).await), "view: patch");
    assert!(forbidden(as_viewer.delete("tenant", &DeleteParams::default()).await), "view: delete");

    as_editor.delete("tenant", &DeleteParams::default()).await.expect("edit may delete it");
    wait_for("the pipeline to be gone", Duration::from_secs(60), || async {
        as_editor.get_opt("tenant").await.ok()?.is_none().then_some(())
    })
    .await;
    drop(inst);
    delete_namespaces(&client, &[&release_ns, &ns]).await;
}
