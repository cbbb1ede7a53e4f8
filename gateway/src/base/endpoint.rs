//! Endpoint ids and passwords: the names every layer passes around.

use std::fmt;

/// An endpoint id, or an endpoint's `-pooler`: what the wake service accepts as an id
/// ([`wake_api::names::valid_endpoint_id`], one DNS label), compared without case.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(String);

impl EndpointId {
    pub fn parse(id: &str) -> Option<EndpointId> {
        let id = id.to_ascii_lowercase();
        let (base, _) = wake_api::split_pooler(&id);
        (id.len() <= 63 && wake_api::names::valid_endpoint_id(base)).then_some(EndpointId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The endpoint without `-pooler`: roles, secrets and activity belong to it, not to its
    /// PgBouncer.
    pub fn without_pooler(&self) -> EndpointId {
        match wake_api::split_pooler(&self.0) {
            (id, true) => EndpointId(id.to_owned()),
            (_, false) => self.clone(),
        }
    }

    /// Whether this names an endpoint's PgBouncer (`<id>-pooler`).
    pub fn is_pooler(&self) -> bool {
        wake_api::split_pooler(&self.0).1
    }

    /// `<id>-pooler`, this endpoint's PgBouncer (`None` when the name would be too long).
    pub fn pooler(&self) -> Option<EndpointId> {
        EndpointId::parse(&format!("{}{}", self.0, wake_api::POOLER_SUFFIX))
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password: bytes, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl Password {
    pub fn new(bytes: Vec<u8>) -> Self {
        Password(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}
