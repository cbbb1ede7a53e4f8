//! Everything the gateway learns from and tells the control plane: the wake-service client,
//! the route and role-secret caches in front of it, and the activity that keeps endpoints awake.

pub mod activity;
pub mod client;
pub mod jwt_rules;
pub mod routes;
