//! Observability: the one typed metrics struct and the per-endpoint usage counters.

pub mod labels;
pub mod metrics;
pub mod usage;
