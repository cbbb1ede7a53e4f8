//! What every front end shares once it knows who the client claims to be: the login path
//! (password → route → backend) and the pool of verified backend connections; and what the
//! gateway tells the control plane (activity reports, with usage for metering).

pub mod cancel;
pub mod login;
pub mod metering;
pub mod pool;
pub mod reporter;
