//! Test doubles for the gateway's tests, unit and integration alike. The gateway is not a
//! dependency: everything here speaks to it over real sockets, in the wire types of
//! `wake-api`.
//!
//! - [`FakeControlPlane`]: the proxy API answering from scripts (refuse, delay, go down and
//!   come back), counting and recording what it is asked.
//! - [`TestWakeService`]: the real wake service in-process, for tests that need no scripted
//!   fault.
//! - [`TestPostgres`] ([`postgres()`]): the real Postgres 15 every test process shares.

pub mod control_plane;
pub mod postgres;
pub mod wake;

pub use control_plane::{Call, FakeControlPlane, Outage, ReceivedReport, Reply, Request};
pub use postgres::{free_port, postgres, TestPostgres};
pub use wake::TestWakeService;
