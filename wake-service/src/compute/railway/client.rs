//! The HTTP client of Railway's public GraphQL API (`POST <api>/graphql/v2`, a bearer token):
//! one request at a time through a client-side budget of Railway's per-plan rate limits,
//! `429` honoured with its `Retry-After` for every later request too, transient failures
//! retried with backoff where repeating the request is safe, every call bounded by a
//! deadline, and GraphQL `errors` turned into a [`RailwayError`] that names the operation.
//!
//! Written here rather than with a GraphQL client crate: the driver sends a handful of fixed
//! documents (`ops.rs`), and what matters is the retry and budget policy around them, which
//! no such crate offers. The token is never logged, and no error carries it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

/// The longest a single HTTP request may take, by default (`--railway-request-timeout-ms`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How many times one call is tried at most.
const ATTEMPTS: u32 = 5;
/// The first retry's delay; doubled each time, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// The wait after a `429` without a usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The most of a GraphQL error message or HTTP body kept in an error.
const MAX_MESSAGE: usize = 300;

/// Whether a request may be sent again when its outcome is unknown (a timeout, a 5xx).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// A query, or a mutation whose repetition changes nothing (set limits, stop one
    /// deployment): retried on any transient failure.
    Always,
    /// A mutation that must not run twice (redeploy): retried only when Railway provably did
    /// not process it (`429`, no connection). Otherwise the caller looks at what happened.
    IfNotProcessed,
}

/// One GraphQL operation to send.
pub struct Request {
    /// The operation's name, as in `query`: for errors, logs and metrics.
    pub name: &'static str,
    pub query: &'static str,
    pub variables: Value,
    pub retry: Retry,
    /// The whole call, retries and waits included, ends by then.
    pub deadline: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum RailwayError {
    /// Railway answered with GraphQL errors (a bad id, a forbidden service, …).
    #[error("railway refused {operation}: {message}")]
    GraphQl {
        operation: &'static str,
        message: String,
    },
    #[error("railway rejected the API token ({status}) for {operation}: check RAILWAY_API_TOKEN")]
    Unauthorized {
        operation: &'static str,
        status: u16,
    },
    #[error("railway answered {operation} with HTTP {status}: {body}")]
    Http {
        operation: &'static str,
        status: u16,
        body: String,
    },
    /// The budget (or Railway's `Retry-After`) leaves no room before the deadline.
    #[error("railway rate limit: {operation} could not be sent before its deadline (next slot in {wait:?})")]
    RateLimited {
        operation: &'static str,
        wait: Duration,
    },
    /// No answer in time, or the connection failed after the request was sent: whether
    /// Railway acted on it is unknown.
    #[error("railway did not answer {operation}: {reason}")]
    Unanswered {
        operation: &'static str,
        reason: String,
    },
    #[error("railway's answer to {operation} is not what its schema says: {reason}")]
    Decode {
        operation: &'static str,
        reason: String,
    },
}

/// Railway's limits for the token's plan, kept on the client side so that a busy platform
/// slows itself down instead of being refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateBudget {
    pub per_second: u32,
    pub per_hour: u32,
}

/// How the client talks to Railway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientSettings {
    pub budget: RateBudget,
    /// The longest one HTTP request may take.
    pub request_timeout: Duration,
}

/// The GraphQL client (see the module documentation).
pub struct Client {
    http: reqwest::Client,
    url: reqwest::Url,
    token: String,
    budget: RateBudget,
    request_timeout: Duration,
    window: Mutex<Window>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url.as_str())
            .field("token", &"<redacted>")
            .field("budget", &self.budget)
            .finish()
    }
}

/// Requests sent in the last second and hour, and a `Retry-After` still running.
#[derive(Default)]
struct Window {
    sent: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

#[derive(Deserialize)]
struct Response {
    data: Option<Value>,
    #[serde(default)]
    errors: Vec<GraphQlError>,
}

#[derive(Deserialize)]
struct GraphQlError {
    message: String,
}

/// What one attempt came to.
enum Attempt {
    Done(Value),
    /// Not processed by Railway: send again after the wait (the budget applies too).
    Again(Duration),
    /// Maybe processed: send again only when the request allows it.
    Unknown(RailwayError),
    Failed(RailwayError),
}

impl Client {
    pub fn new(
        url: reqwest::Url,
        token: String,
        settings: ClientSettings,
    ) -> Result<Client, String> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("railway HTTP client: {e}"))?;
        Ok(Client {
            http,
            url,
            token,
            budget: settings.budget,
            request_timeout: settings.request_timeout,
            window: Mutex::new(Window::default()),
        })
    }

    /// The longest one HTTP request may take.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sends `request` (retrying as its [`Retry`] allows) and decodes its `data`.
    pub async fn call<T: DeserializeOwned>(&self, request: &Request) -> Result<T, RailwayError> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            self.take_slot(request).await?;
            let wait = match self.attempt(request).await {
                Attempt::Done(data) => {
                    return serde_json::from_value(data).map_err(|e| RailwayError::Decode {
                        operation: request.name,
                        reason: e.to_string(),
                    })
                }
                Attempt::Failed(e) => return Err(e),
                Attempt::Unknown(e) if request.retry == Retry::IfNotProcessed => return Err(e),
                Attempt::Unknown(e) if attempt >= ATTEMPTS => return Err(e),
                Attempt::Unknown(e) => {
                    tracing::warn!(operation = request.name, attempt, error = %e, "railway call failed; retrying");
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
                Attempt::Again(wait) => wait,
            };
            if Instant::now() + wait > request.deadline || attempt >= ATTEMPTS * 2 {
                return Err(RailwayError::RateLimited {
                    operation: request.name,
                    wait,
                });
            }
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// One HTTP exchange, classified.
    async fn attempt(&self, request: &Request) -> Attempt {
        let operation = request.name;
        let left = request.deadline.saturating_duration_since(Instant::now());
        let body = serde_json::json!({
            "query": request.query,
            "operationName": operation,
            "variables": request.variables,
        });
        let sent = self
            .http
            .post(self.url.clone())
            .bearer_auth(&self.token)
            .timeout(left.min(self.request_timeout))
            .json(&body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            // Nothing reached Railway: safe to send again.
            Err(e) if e.is_connect() => return Attempt::Again(FIRST_BACKOFF),
            Err(e) => {
                return Attempt::Unknown(RailwayError::Unanswered {
                    operation,
                    reason: if e.is_timeout() {
                        "timed out".to_owned()
                    } else {
                        without_url(&e)
                    },
                })
            }
        };
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let wait = retry_after(response.headers()).unwrap_or(DEFAULT_RETRY_AFTER);
            self.block_for(wait);
            tracing::warn!(operation, ?wait, "railway rate limit (429)");
            return Attempt::Again(wait);
        }
        let text = match response.text().await {
            Ok(text) => text,
            Err(e) => {
                return Attempt::Unknown(RailwayError::Unanswered {
                    operation,
                    reason: without_url(&e),
                })
            }
        };
        classify(operation, status, &text)
    }

    /// Waits until the budget and any `Retry-After` allow one more request, then counts it;
    /// refuses at once when that would pass the request's deadline.
    async fn take_slot(&self, request: &Request) -> Result<(), RailwayError> {
        loop {
            let now = Instant::now();
            let wait = {
                let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
                let wait = window.wait(now, self.budget);
                if wait.is_zero() {
                    window.sent.push_back(now);
                    return Ok(());
                }
                wait
            };
            if now + wait > request.deadline {
                return Err(RailwayError::RateLimited {
                    operation: request.name,
                    wait,
                });
            }
            tokio::time::sleep(wait).await;
        }
    }

    fn block_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        window.blocked_until = Some(window.blocked_until.map_or(until, |b| b.max(until)));
    }
}

impl Window {
    /// How long until one more request fits (zero: now).
    fn wait(&mut self, now: Instant, budget: RateBudget) -> Duration {
        const SECOND: Duration = Duration::from_secs(1);
        const HOUR: Duration = Duration::from_secs(3600);
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= HOUR)
        {
            self.sent.pop_front();
        }
        let mut wait = self
            .blocked_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        let per_hour = usize::try_from(budget.per_hour.max(1)).unwrap_or(usize::MAX);
        if self.sent.len() >= per_hour {
            if let Some(oldest) = self.sent.iter().rev().nth(per_hour - 1) {
                wait = wait.max((*oldest + HOUR).saturating_duration_since(now));
            }
        }
        let per_second = usize::try_from(budget.per_second.max(1)).unwrap_or(usize::MAX);
        let last_second = self
            .sent
            .iter()
            .rev()
            .take_while(|t| now.duration_since(**t) < SECOND)
            .count();
        if last_second >= per_second {
            if let Some(oldest) = self.sent.iter().rev().nth(per_second - 1) {
                wait = wait.max((*oldest + SECOND).saturating_duration_since(now));
            }
        }
        wait
    }
}

/// A finished HTTP exchange's outcome.
fn classify(operation: &'static str, status: reqwest::StatusCode, text: &str) -> Attempt {
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Attempt::Failed(RailwayError::Unauthorized {
            operation,
            status: status.as_u16(),
        });
    }
    let http = || RailwayError::Http {
        operation,
        status: status.as_u16(),
        body: clip(text),
    };
    if status.is_server_error() {
        return Attempt::Unknown(http());
    }
    // GraphQL servers answer validation errors with 400 and a GraphQL body.
    let parsed: Result<Response, _> = serde_json::from_str(text);
    match parsed {
        Ok(response) if !response.errors.is_empty() => {
            let messages: Vec<&str> = response.errors.iter().map(|e| e.message.as_str()).collect();
            Attempt::Failed(RailwayError::GraphQl {
                operation,
                message: clip(&messages.join("; ")),
            })
        }
        Ok(Response {
            data: Some(data), ..
        }) if status.is_success() => Attempt::Done(data),
        _ if !status.is_success() => Attempt::Failed(http()),
        _ => Attempt::Failed(RailwayError::Decode {
            operation,
            reason: format!("no data in: {}", clip(text)),
        }),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Railway).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}

fn clip(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_MESSAGE) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// A transport error's message without the URL (which holds no secret, but is noise).
fn without_url(e: &reqwest::Error) -> String {
    let mut message = e.to_string();
    if let Some(url) = e.url() {
        message = message.replace(url.as_str(), "the API");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_spaces_requests() {
        let budget = RateBudget {
            per_second: 2,
            per_hour: 3,
        };
        let start = Instant::now();
        let mut window = Window::default();
        assert_eq!(window.wait(start, budget), Duration::ZERO);
        window.sent.push_back(start);
        window.sent.push_back(start);
        let wait = window.wait(start, budget);
        assert!(wait > Duration::from_millis(900), "{wait:?}");
        let later = start + Duration::from_secs(1);
        assert_eq!(window.wait(later, budget), Duration::ZERO);
        window.sent.push_back(later);
        let wait = window.wait(later, budget);
        assert!(
            wait > Duration::from_secs(3500),
            "the hour is spent: {wait:?}"
        );
        let next_hour = start + Duration::from_secs(3600);
        assert_eq!(window.wait(next_hour, budget), Duration::ZERO);
    }

    #[test]
    fn retry_after_blocks_everyone() {
        let mut window = Window::default();
        let now = Instant::now();
        window.blocked_until = Some(now + Duration::from_secs(7));
        let budget = RateBudget {
            per_second: 10,
            per_hour: 1000,
        };
        assert!(window.wait(now, budget) > Duration::from_secs(6));
    }

    #[test]
    fn answers_are_classified() {
        let ok = reqwest::StatusCode::OK;
        assert!(matches!(
            classify("Op", ok, r#"{"data":{"x":1}}"#),
            Attempt::Done(_)
        ));
        match classify(
            "Op",
            ok,
            r#"{"data":null,"errors":[{"message":"Not Authorized"}]}"#,
        ) {
            Attempt::Failed(RailwayError::GraphQl { message, .. }) => {
                assert_eq!(message, "Not Authorized")
            }
            _ => panic!("graphql errors"),
        }
        let bad = reqwest::StatusCode::BAD_GATEWAY;
        assert!(matches!(classify("Op", bad, "oops"), Attempt::Unknown(_)));
        let denied = reqwest::StatusCode::UNAUTHORIZED;
        assert!(matches!(
            classify("Op", denied, ""),
            Attempt::Failed(RailwayError::Unauthorized { .. })
        ));
        assert!(matches!(classify("Op", ok, "not json"), Attempt::Failed(_)));
    }
}
