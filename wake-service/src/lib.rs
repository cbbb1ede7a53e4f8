//! The wake service: the control plane. It owns endpoints, their roles and databases, and the
//! lifecycle of their computes, and answers the gateway's "where is endpoint X" questions.

pub mod compute;
