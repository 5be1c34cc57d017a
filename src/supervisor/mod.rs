//! Supervision: the pure engine and its restart policy.
//! The runtime that carries out its actions lives in `agent`.

pub mod policy;
pub mod state;
pub mod watchdog;

pub use policy::End;
pub use state::{
    Action, Check, Health, HealthSpec, Input, ReadyProbe, ReadySpec, Spec, State, Status,
    StopOutcome, Supervisor, Want,
};
