//! TEMPORARY stub of the JWT validator's API (replaced by the real module at merge).

use std::sync::Arc;

use wake_api::proxy::JwksSettings;

use crate::base::endpoint::EndpointId;
use crate::base::error::{ErrorKind, ReportableError};

#[derive(Clone, Debug)]
pub struct JwtRule {
    pub id: String,
    pub role_names: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid rule")]
pub struct RuleError;

impl JwtRule {
    pub fn from_settings(
        s: &JwksSettings,
        _allow_http_loopback: bool,
    ) -> Result<JwtRule, RuleError> {
        Ok(JwtRule {
            id: s.id.clone(),
            role_names: s.role_names.clone(),
        })
    }
}

#[derive(Clone, Debug, Default)]
pub struct JwtConfig {
    pub allow_http_loopback: bool,
}

pub struct JwtValidator;

pub struct VerifiedJwt {
    pub claims: serde_json::Map<String, serde_json::Value>,
    pub exp: u64,
    pub rule_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("authentication failed: invalid JWT")]
    Invalid,
    #[error("authentication failed: the JWT's keys are unavailable")]
    KeysUnavailable,
}

impl ReportableError for JwtError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::User
    }
}

impl JwtValidator {
    pub fn new(_config: JwtConfig, _metrics: &Arc<crate::obs::metrics::Metrics>) -> Self {
        JwtValidator
    }

    pub async fn validate(
        &self,
        _endpoint: &EndpointId,
        _rules: &[JwtRule],
        _role: &str,
        _token: &str,
    ) -> Result<VerifiedJwt, JwtError> {
        Err(JwtError::Invalid)
    }
}
