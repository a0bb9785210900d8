//! The operator against the real control plane (kwok runs the pods): children, rollouts, deletion,
//! validation at apply time, pause, zero-write resyncs, readiness and leader election.

mod invalid_spec;
mod leader;
mod lifecycle;
mod validation;
