//! What every front end shares once it knows who the client claims to be: the login path
//! (password → route → backend) and the pool of verified backend connections.

pub mod cancel;
pub mod login;
pub mod pool;
pub mod reporter;
