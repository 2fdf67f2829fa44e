//! Rollouts: the plan a person writes (`plan`, with its metric `gates`) and the
//! pure state machine (`state`). Depends on nothing of the controller's but units
//! and documents: every other room builds on it.

pub mod gates;
pub mod permit;
pub mod plan;
pub mod state;
pub mod threshold;

pub use state::{
    route_for, stable_after, stable_only, transition, Action, AuditAction, Illegal, ManualAction,
    Phase, RolloutState, Transition,
};
