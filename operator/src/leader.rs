//! Leader election with a coordination.k8s.io Lease, so two operator replicas can run safely: only the holder
//! reconciles; the other waits and takes over once the lease expires (or is released on shutdown).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
}

/// A held lease.
pub struct Leadership {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Block until this replica holds the lease.
pub async fn acquire(client: Client, cfg: LeaseConfig) -> Leadership {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let retry = (cfg.duration / 5).max(Duration::from_millis(200));
    let mut announced_wait = false;
    loop {
        match try_acquire(&api, &cfg).await {
            Ok(true) => {
                info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
                return Leadership { api, cfg };
            }
            Ok(false) => {
                if !announced_wait {
                    info!(lease = %cfg.name, "another replica leads; standing by");
                    announced_wait = true;
                }
            }
            Err(e) => warn!(error = %e, "leader election"),
        }
        tokio::time::sleep(retry).await;
    }
}

fn expired(spec: &LeaseSpec) -> bool {
    let (Some(renew), Some(secs)) = (&spec.renew_time, spec.lease_duration_seconds) else { return true };
    let until = renew.0 + std::time::Duration::from_secs(secs as u64);
    until < Timestamp::now()
}

async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let secs = cfg.duration.as_secs().max(1) as i32;
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(cfg.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            let holder = spec.holder_identity.clone().unwrap_or_default();
            if !holder.is_empty() && holder != cfg.identity && !expired(spec) {
                return Ok(false);
            }
            if holder != cfg.identity {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                spec.acquire_time = Some(now());
            }
            spec.holder_identity = Some(cfg.identity.clone());
            spec.lease_duration_seconds = Some(secs);
            spec.renew_time = Some(now());
            // replace() carries the resourceVersion: if another replica won meanwhile, we get 409.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

impl Leadership {
    /// Renew the lease until it is lost; returns when leadership is lost (the caller must stop reconciling).
    pub async fn keep(&self) {
        let period = self.cfg.duration / 3;
        let mut last_ok = std::time::Instant::now();
        loop {
            tokio::time::sleep(period).await;
            match try_acquire(&self.api, &self.cfg).await {
                Ok(true) => last_ok = std::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.cfg.name, "lease taken by another replica");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "renewing lease failed");
                    if last_ok.elapsed() >= self.cfg.duration {
                        return;
                    }
                }
            }
        }
    }

    /// Give the lease up on shutdown so a standby takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.cfg.identity.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                let _ = self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await;
                info!(lease = %self.cfg.name, "released leadership");
            }
        }
    }
}
