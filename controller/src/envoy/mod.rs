//! Talking to Envoy's admin endpoint: one client (`admin`), used by the analysis'
//! evidence source and by the controller's runtime-weights driver.

pub mod admin;
