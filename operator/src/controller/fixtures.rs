//! A mock apiserver for the controller's unit tests, in the style of kube-rs controller-rs `fixtures.rs`: the
//! client talks to a `tower_test` mock service, and an [`ApiServerVerifier`] asserts each request the code
//! makes, in order, answers it with a canned response, and fails on any request it did not expect.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::reflector;
use serde_json::Value;
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

use super::{Context, Settings, Shared};
use crate::metrics::Metrics;
use crate::workloads::WorkloadDefaults;

/// How the mock apiserver answers one request.
pub enum Answer {
    /// 200 with the request's own body (what a server-side apply or a create returns, near enough).
    Echo,
    /// This status and JSON body.
    Json(StatusCode, Value),
}

/// One request the code under test must make next, and its answer.
pub struct Expect {
    /// HTTP method.
    pub method: Method,
    /// URI path, without the query.
    pub path: String,
    /// The answer.
    pub answer: Answer,
}

impl Expect {
    /// A PATCH of `path`, answered with `answer`.
    pub fn patch(path: impl Into<String>, answer: Answer) -> Self {
        Expect { method: Method::PATCH, path: path.into(), answer }
    }
    /// A POST of `path`, answered with its own body.
    pub fn post(path: impl Into<String>) -> Self {
        Expect { method: Method::POST, path: path.into(), answer: Answer::Echo }
    }
}

/// A `metav1.Status` failure body, as the apiserver sends with a 4xx/5xx.
pub fn status_failure(code: StatusCode, reason: &str) -> Answer {
    let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": format!("{reason} (mock)"), "reason": reason, "code": code.as_u16()});
    Answer::Json(code, body)
}

/// The apiserver side of the mock pair.
pub struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// Serve `expected` in order, asserting method and path of each request, then assert that no other request
    /// comes before every client is dropped. The task yields the JSON bodies of the requests, in order.
    pub fn serve(self, expected: Vec<Expect>) -> JoinHandle<Vec<Value>> {
        let mut handle = self.0;
        tokio::spawn(async move {
            let mut bodies = vec![];
            for e in expected {
                let (request, send) = handle
                    .next_request()
                    .await
                    .unwrap_or_else(|| panic!("no more requests; expected {} {}", e.method, e.path));
                assert_eq!((request.method(), request.uri().path()), (&e.method, e.path.as_str()));
                let bytes = request.into_body().collect_bytes().await.expect("request body");
                let body: Value =
                    if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
                let (code, answer) = match e.answer {
                    Answer::Echo => (StatusCode::OK, body.clone()),
                    Answer::Json(code, v) => (code, v),
                };
                let response = Response::builder().status(code).body(Body::from(serde_json::to_vec(&answer).unwrap()));
                send.send_response(response.unwrap());
                bodies.push(body);
            }
            if let Some((request, _)) = handle.next_request().await {
                panic!("unexpected request {} {}", request.method(), request.uri());
            }
            bodies
        })
    }
}

/// Wait (with a deadline) for the verifier to have seen every expected request and the clients to be gone.
pub async fn verified(v: JoinHandle<Vec<Value>>) -> Vec<Value> {
    tokio::time::timeout(Duration::from_secs(10), v).await.expect("the verifier finished in time").expect("verifier")
}

/// A reconcile context over a mock apiserver, with empty stores.
pub fn context() -> (Context, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
    let settings = Settings {
        workloads: WorkloadDefaults { worker_image: "worker:test".into(), image_pull_policy: "IfNotPresent".into() },
        resync: Duration::from_secs(300),
        finalizer_timeout: Duration::from_secs(60),
        reconcile_timeout: Duration::from_secs(60),
        max_concurrent_reconciles: 1,
    };
    let ctx = Context {
        shared: Shared::new(client, metrics, settings, "test".into()),
        pipelines: reflector::store().0,
        deployments: reflector::store().0,
        config_maps: reflector::store().0,
        services: reflector::store().0,
        pdbs: reflector::store().0,
    };
    (ctx, ApiServerVerifier(handle))
}
