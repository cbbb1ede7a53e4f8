//! The vocabulary every layer shares and nothing else: endpoint ids and passwords, how errors
//! are classified, the names of the limits, retry rules. Imports nothing from the crate.

pub mod conn_info;
pub mod endpoint;
pub mod error;
pub mod host;
pub mod limits;
pub mod retry;
