//! The vocabulary of `status.conditions`: condition types, statuses and reasons as enums, each written as the
//! same string the API has always shown (`as_str`, `Display`), and read back with `parse`.
//!
//! The phase (`status.phase`) is part of the API types: [`cryptoviz_crds::Phase`].

use std::fmt;

/// Declares a string-valued enum with `ALL`, `as_str`, `parse` (exact match) and `Display` from one table,
/// so a value and its spelling cannot drift apart.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $variant,)+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The string written to the API.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            /// The value spelled `s`, if it is one of ours.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// The condition types this operator writes: one per concern, `Paused`, and the aggregate `Ready`.
    ConditionType {
        /// The Kafka topics match the spec (`topics.rs`).
        TopicsReady = "TopicsReady",
        /// The database schema and policies match the spec (`storage.rs`).
        StorageReady = "StorageReady",
        /// The PodMonitor is as the spec asks, or not required (`monitoring.rs`).
        MonitoringReady = "MonitoringReady",
        /// The scraper Deployment is rolled out and available.
        ScraperReady = "ScraperReady",
        /// The consumer Deployment is rolled out and available (or not required without storage).
        ConsumerReady = "ConsumerReady",
        /// The gateway Deployment is rolled out and available (or disabled).
        GatewayReady = "GatewayReady",
        /// True while reconciliation is paused.
        Paused = "Paused",
        /// True when every other condition but `Paused` is True.
        Ready = "Ready",
    }
}

string_enum! {
    /// A `metav1.Condition` status.
    ConditionStatus {
        /// The condition holds.
        True = "True",
        /// It does not.
        False = "False",
        /// Not known yet.
        Unknown = "Unknown",
    }
}

string_enum! {
    /// The reasons this operator writes itself. Reasons it passes on from elsewhere (a Deployment's
    /// `Progressing` condition, a schema error's label) are [`Reason::Other`].
    KnownReason {
        // Any concern.
        /// The concern is not asked for by the spec.
        NotRequired = "NotRequired",
        /// A referenced Secret is missing, lacks a key or holds an unusable value.
        SecretInvalid = "SecretInvalid",
        /// The spec cannot be rendered into a worker configuration (only specs the schema did not check).
        ConfigInvalid = "ConfigInvalid",
        /// On `Ready`: the spec passed the schema but is invalid at run time (a duration out of range, a
        /// cross-field rule CEL cannot check); nothing is applied until it is fixed.
        InvalidSpec = "InvalidSpec",
        // Topics.
        /// The topics match the spec.
        Provisioned = "Provisioned",
        /// The brokers did not answer or refused an admin request.
        KafkaUnavailable = "KafkaUnavailable",
        /// A topic belongs to another pipeline, or exists with other settings.
        TopicConflict = "TopicConflict",
        /// The spec asks for fewer partitions than the topic has.
        PartitionDecreaseRefused = "PartitionDecreaseRefused",
        /// The spec asks for another replication factor.
        ReplicationFactorChangeRefused = "ReplicationFactorChangeRefused",
        // Storage.
        /// The schema uses TimescaleDB hypertables and policies.
        TimescaleDb = "TimescaleDB",
        /// The schema uses plain PostgreSQL tables.
        PlainPostgreSql = "PlainPostgreSQL",
        /// The database did not answer.
        DatabaseUnreachable = "DatabaseUnreachable",
        /// The database role may not make a change the spec needs.
        PermissionDenied = "PermissionDenied",
        /// A schema statement failed.
        MigrationFailed = "MigrationFailed",
        /// The schema belongs to another pipeline (its owner mark), or exists without the operator's mark.
        SchemaConflict = "SchemaConflict",
        // Monitoring.
        /// Looking up the monitoring.coreos.com API failed.
        DiscoveryFailed = "DiscoveryFailed",
        /// A PodMonitor is required but its CRD is not installed.
        PrometheusOperatorMissing = "PrometheusOperatorMissing",
        /// Reading, applying or deleting the PodMonitor failed.
        PodMonitorFailed = "PodMonitorFailed",
        /// The PodMonitor exists as wanted.
        PodMonitorCreated = "PodMonitorCreated",
        // Workers.
        /// The Deployment does not exist yet.
        DeploymentMissing = "DeploymentMissing",
        /// The Deployment has no status yet.
        RolloutPending = "RolloutPending",
        /// The Deployment is rolling out.
        RolloutInProgress = "RolloutInProgress",
        /// The Deployment asks for zero replicas.
        ScaledToZero = "ScaledToZero",
        /// Every wanted pod is available.
        Available = "Available",
        /// Not every wanted pod is available.
        Unavailable = "Unavailable",
        /// The Deployment reports Progressing=False without a reason of its own.
        ProgressDeadlineExceeded = "ProgressDeadlineExceeded",
        // Ready and Paused.
        /// Every concern is ready.
        AllComponentsReady = "AllComponentsReady",
        /// Reconciliation is active.
        NotPaused = "NotPaused",
        /// Reconciliation is paused by the spec or the annotation.
        ReconciliationPaused = "ReconciliationPaused",
    }
}

/// A condition reason: one of ours, or a string passed on verbatim from another component.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A reason this operator defines.
    Known(KnownReason),
    /// A reason from elsewhere (a Deployment's condition, the storage runtime), written unchanged.
    Other(String),
}

impl Reason {
    /// The reason spelled `s`: [`Reason::Known`] when it is one of ours.
    pub fn parse(s: &str) -> Self {
        KnownReason::parse(s).map_or_else(|| Reason::Other(s.to_owned()), Reason::Known)
    }

    /// The string written to the API.
    pub fn as_str(&self) -> &str {
        match self {
            Reason::Known(k) => k.as_str(),
            Reason::Other(s) => s,
        }
    }
}

impl From<KnownReason> for Reason {
    fn from(k: KnownReason) -> Self {
        Reason::Known(k)
    }
}

impl PartialEq<KnownReason> for Reason {
    fn eq(&self, other: &KnownReason) -> bool {
        *self == Reason::Known(*other)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_reads_back_from_its_spelling() {
        for t in ConditionType::ALL {
            assert_eq!(ConditionType::parse(t.as_str()), Some(*t));
        }
        for s in ConditionStatus::ALL {
            assert_eq!(ConditionStatus::parse(&s.to_string()), Some(*s));
        }
        for r in KnownReason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Reason::Known(*r));
        }
    }

    #[test]
    fn spellings_are_the_api_strings() {
        assert_eq!(ConditionType::MonitoringReady.as_str(), "MonitoringReady");
        assert_eq!(ConditionStatus::True.as_str(), "True");
        assert_eq!(KnownReason::TimescaleDb.as_str(), "TimescaleDB");
        assert_eq!(Reason::parse("MinimumReplicasUnavailable"), Reason::Other("MinimumReplicasUnavailable".into()));
    }
}
