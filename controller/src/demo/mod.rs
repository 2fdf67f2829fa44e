//! The demo's moving parts, apart from the control plane: an agent backend that
//! applies the policy named in `x-agent-policy` (`canaryctl agent`) and a
//! traffic generator with sticky sessions (`canaryctl traffic`). The agent can
//! also act as a (simulated) LLM judge that posts delayed scores (`judge`).

pub mod agent;
pub mod judge;
pub mod traffic;
