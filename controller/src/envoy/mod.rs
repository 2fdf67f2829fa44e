//! Talking to Envoy: one admin client (`admin`) used by the analysis' evidence
//! source and by the runtime-weights driver (`runtime`).

pub mod admin;
pub mod runtime;
