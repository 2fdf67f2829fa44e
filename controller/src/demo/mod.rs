//! The demo's moving parts, apart from the control plane: an agent backend that
//! applies the policy named in `x-agent-policy` (`canaryctl agent`) and a
//! traffic generator with sticky sessions (`canaryctl traffic`).

pub mod agent;
pub mod traffic;
