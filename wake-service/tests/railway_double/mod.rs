//! A test double of Railway's public GraphQL API, for the `railway` compute driver's tests (this
//! is test code only; the driver's production path is its real HTTP GraphQL client, pointed at
//! the double with `--railway-api-url`): the contract every request is validated against
//! ([`contract`]), and the server that simulates services and deployments ([`server`]) with a
//! real Postgres behind them ([`postgres`]).

#![allow(dead_code)] // each test file uses part of it

pub mod contract;
pub mod postgres;
pub mod server;
