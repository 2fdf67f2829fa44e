//! Rollouts: the plan a person writes (`plan`), the pure state machine (`state`)
//! and the one typed view of a rollout that the API, the dashboard and the CLI
//! share (`view`).

pub mod plan;
pub mod state;
pub mod view;

pub use state::{
    route_for, stable_after, stable_only, transition, Action, AuditAction, Illegal, ManualAction,
    Phase, RolloutState, Transition,
};
