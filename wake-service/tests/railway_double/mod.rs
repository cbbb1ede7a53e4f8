//! A test double of Railway's public GraphQL API, for the `railway` compute driver's tests (this
//! is test code only; the driver's production path is its real HTTP GraphQL client). So far:
//! the contract every request is validated against ([`contract`]).

pub mod contract;
