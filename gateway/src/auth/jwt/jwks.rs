//! Key sets fetched from JWKS URLs, cached per (endpoint, rule).
//!
//! Fetching: `reqwest` over rustls (ring, webpki roots compiled in), no redirects, no proxies,
//! public addresses only unless allowed ([`super::addresses`]), connect and total timeouts, a
//! body cap, status 200 only; the keys are parsed one by one
//! ([`KeySet::parse`]). A body with no usable key counts as a failed fetch.
//!
//! Caching ([`Jwks::keys`]): a set younger than `refresh_after` is served as is; an older one
//! is served while one background task refreshes it; one older than `max_age` (or none yet) is
//! fetched before use. [`Jwks::refetch`] (an unknown `kid`) fetches again, before use. Every
//! fetch of an entry is single-flight (one lock per entry; whoever waited for it uses its
//! result), and no fetch starts within `min_refetch` of the entry's last attempt, whatever
//! asked for it: a flood of unknown kids, or requests while the JWKS is down, cost at most one
//! fetch per interval. A failed fetch keeps the last good set. A fetch runs in a task of its
//! own: a caller that goes away (its client disconnected) does not cancel it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use url::Url;

use super::addresses::{self, NotPermitted, Resolver};
use super::keys::KeySet;
use super::JwtConfig;
use crate::base::endpoint::EndpointId;
use crate::obs::labels::{JwksCache, JwksFetch};
use crate::obs::metrics::{Counter, Metrics};

/// The most (endpoint, rule) entries cached.
const MAX_ENTRIES: u64 = 10_000;
/// An entry nobody looked at for this long is dropped.
const IDLE: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    endpoint: EndpointId,
    rule: String,
    url: Url,
}

/// What is known of one rule's set.
#[derive(Clone, Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    /// When `keys` was fetched.
    fetched: Option<Instant>,
    /// When the last fetch started.
    attempted: Option<Instant>,
    /// How many fetches ended (the generation a caller saw, so it can tell whether a fetch
    /// ended while it waited for the lock).
    done: u64,
}

/// A rule's keys as a caller saw them.
#[derive(Clone)]
pub(super) struct Seen {
    /// `None` when no fetch ever succeeded.
    pub keys: Option<Arc<KeySet>>,
    done: u64,
}

struct Entry {
    url: Url,
    state: Mutex<State>,
    /// Held by the one fetch of this entry in flight.
    fetching: Arc<tokio::sync::Mutex<()>>,
}

impl Entry {
    fn state(&self) -> State {
        self.state.lock().expect("never poisoned").clone()
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().expect("never poisoned"));
    }
}

/// Why a fetch failed (logged; counted by [`JwksFetch`]).
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("transport error: {0}")]
    Transport(String),
    #[error(transparent)]
    NotPermitted(#[from] NotPermitted),
    #[error("timed out")]
    Timeout,
    #[error("status {0}")]
    Status(u16),
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("not a key set: {0}")]
    Invalid(String),
}

impl FetchError {
    fn outcome(&self) -> JwksFetch {
        match self {
            FetchError::Transport(_) => JwksFetch::Error,
            FetchError::NotPermitted(_) => JwksFetch::NotPermitted,
            FetchError::Timeout => JwksFetch::Timeout,
            FetchError::Status(_) => JwksFetch::BadStatus,
            FetchError::TooLarge(_) => JwksFetch::TooLarge,
            FetchError::Invalid(_) => JwksFetch::Invalid,
        }
    }

    fn of(error: reqwest::Error) -> FetchError {
        if error.is_timeout() {
            return FetchError::Timeout;
        }
        // The chain says what failed (connect, TLS, DNS); the URL is logged apart.
        let error = error.without_url();
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            if cause.is::<NotPermitted>() {
                return FetchError::NotPermitted(NotPermitted);
            }
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        FetchError::Transport(text)
    }
}

impl Seen {
    /// An inline set: nothing to fetch.
    pub(super) fn inline(keys: Arc<KeySet>) -> Seen {
        Seen {
            keys: Some(keys),
            done: 0,
        }
    }
}

/// The fetcher and its cache.
pub(super) struct Jwks {
    inner: Arc<Fetcher>,
    cache: moka::future::Cache<Key, Arc<Entry>>,
}

struct Fetcher {
    client: reqwest::Client,
    config: JwtConfig,
    fetches: Counter<JwksFetch>,
    lookups: Counter<JwksCache>,
}

impl Jwks {
    pub(super) fn new(config: JwtConfig, metrics: &Metrics) -> Jwks {
        let resolver = Resolver {
            allowed: config.allowed_addresses(),
        };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(std::sync::Arc::new(resolver))
            .https_only(!config.allow_http_loopback)
            .connect_timeout(config.fetch_connect_timeout)
            .timeout(config.fetch_timeout)
            .user_agent(concat!("gateway-jwks/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the JWKS client's TLS setup is static");
        Jwks {
            inner: Arc::new(Fetcher {
                client,
                config,
                fetches: metrics.jwks_fetches.clone(),
                lookups: metrics.jwks_cache.clone(),
            }),
            cache: moka::future::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_idle(IDLE)
                .build(),
        }
    }

    async fn entry(&self, endpoint: &EndpointId, rule: &str, url: &Url) -> Arc<Entry> {
        let key = Key {
            endpoint: endpoint.clone(),
            rule: rule.to_owned(),
            url: url.clone(),
        };
        self.cache
            .get_with(key, async {
                Arc::new(Entry {
                    url: url.clone(),
                    state: Mutex::new(State::default()),
                    fetching: Arc::new(tokio::sync::Mutex::new(())),
                })
            })
            .await
    }

    /// The rule's keys, fetched first when there are none yet or they are older than
    /// `max_age`.
    pub(super) async fn keys(&self, endpoint: &EndpointId, rule: &str, url: &Url) -> Seen {
        let entry = self.entry(endpoint, rule, url).await;
        let state = entry.state();
        let config = &self.inner.config;
        let age = state.fetched.map(|at| at.elapsed());
        match age {
            Some(age) if age < config.max_age => {
                self.inner.lookups.inc(JwksCache::Hit);
                if age >= config.refresh_after {
                    self.refresh_in_background(&entry);
                }
                Seen {
                    keys: state.keys,
                    done: state.done,
                }
            }
            _ => {
                self.inner.lookups.inc(JwksCache::Miss);
                self.inner.fetch_once(&entry, state.done).await
            }
        }
    }

    /// The rule's keys after fetching them again (within the rate limit), unless a fetch
    /// ended since `seen`: a token named a `kid` the set it saw does not have.
    pub(super) async fn refetch(
        &self,
        endpoint: &EndpointId,
        rule: &str,
        url: &Url,
        seen: &Seen,
    ) -> Seen {
        let entry = self.entry(endpoint, rule, url).await;
        self.inner.fetch_once(&entry, seen.done).await
    }

    /// Starts a refresh unless one is running (or the last attempt is too recent).
    fn refresh_in_background(&self, entry: &Arc<Entry>) {
        let Ok(guard) = entry.fetching.clone().try_lock_owned() else {
            return;
        };
        let (fetcher, entry) = (self.inner.clone(), entry.clone());
        tokio::spawn(async move {
            let state = entry.state();
            let fresh = state
                .fetched
                .is_some_and(|at| at.elapsed() < fetcher.config.refresh_after);
            if !fresh && fetcher.may_fetch(&state) {
                fetcher.fetch(&entry).await;
            }
            drop(guard);
        });
    }
}

impl Fetcher {
    /// Whether the rate limit lets a fetch start now.
    fn may_fetch(&self, state: &State) -> bool {
        state
            .attempted
            .is_none_or(|at| at.elapsed() >= self.config.min_refetch)
    }

    /// Fetches the entry's set unless a fetch ended since the caller saw `done` of them (it
    /// waited for that one) or the rate limit forbids it; the keys after. The fetch runs in a
    /// task of its own, holding the entry's lock: a caller that goes away (a client that
    /// disconnects) does not cancel it, so whoever waits for it gets its result rather than
    /// a rate-limited nothing.
    async fn fetch_once(self: &Arc<Self>, entry: &Arc<Entry>, done: u64) -> Seen {
        let fetching = entry.fetching.clone().lock_owned().await;
        let state = entry.state();
        if state.done == done && self.may_fetch(&state) {
            let (fetcher, task_entry) = (self.clone(), entry.clone());
            let fetch = tokio::spawn(async move {
                fetcher.fetch(&task_entry).await;
                drop(fetching);
            });
            if let Err(error) = fetch.await {
                tracing::error!(%error, "JWKS fetch task failed");
            }
        }
        let state = entry.state();
        Seen {
            keys: state.keys,
            done: state.done,
        }
    }

    /// One fetch, its outcome recorded in the entry: a new set, or the last good one kept.
    async fn fetch(&self, entry: &Entry) {
        entry.update(|state| state.attempted = Some(Instant::now()));
        let host = entry.url.host_str().unwrap_or_default();
        match self.download(&entry.url).await {
            Ok(keys) => {
                self.fetches.inc(JwksFetch::Ok);
                tracing::debug!(host, keys = keys.keys.len(), "JWKS fetched");
                entry.update(|state| {
                    state.keys = Some(Arc::new(keys));
                    state.fetched = Some(Instant::now());
                    state.done += 1;
                });
            }
            Err(error) => {
                self.fetches.inc(error.outcome());
                entry.update(|state| state.done += 1);
                let kept = entry.state().keys.is_some();
                tracing::warn!(url = %entry.url, %error, kept, "JWKS fetch failed");
            }
        }
    }

    async fn download(&self, url: &Url) -> Result<KeySet, FetchError> {
        addresses::check_literal(url, self.config.allowed_addresses())?;
        let mut response = self
            .client
            .get(url.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(FetchError::of)?;
        let status = response.status();
        if status != http::StatusCode::OK {
            return Err(FetchError::Status(status.as_u16()));
        }
        let cap = self.config.max_body_bytes;
        if response
            .content_length()
            .is_some_and(|len| len > cap as u64)
        {
            return Err(FetchError::TooLarge(cap));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(FetchError::of)? {
            if body.len() + chunk.len() > cap {
                return Err(FetchError::TooLarge(cap));
            }
            body.extend_from_slice(&chunk);
        }
        let keys = KeySet::parse(&body).map_err(|e| FetchError::Invalid(e.to_string()))?;
        if keys.keys.is_empty() {
            return Err(FetchError::Invalid("no usable key".into()));
        }
        Ok(keys)
    }
}
