//! The limits that keep one client, tenant or endpoint from taking the gateway away from the
//! others. Every limit has a name here, and every time one is hit it is counted once in
//! `gateway_limit_hits_total{limit}` ([`crate::obs::metrics::Metrics::limit_hit`]) where the client
//! is refused; ARCHITECTURE.md lists each limit, its flag, its default and what the client sees.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::base::endpoint::EndpointId;

/// A limit that refused or cut off a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `--max-client-connections`: all client connections together.
    ClientConnections,
    /// `--max-connections-per-ip`: client connections from one IP address.
    ConnectionsPerIp,
    /// `--handshake-timeout-seconds`: a connection that did not send its first request (HTTP
    /// request head, HTTP/2 preface, startup packet, TLS handshake) in time.
    FirstRequestTimeout,
    /// `--http-idle-timeout-seconds`: an HTTP connection (HTTP/1 keep-alive or HTTP/2) with
    /// nothing in flight for this long.
    HttpIdleTimeout,
    /// `--body-read-timeout-seconds`: a `/sql` body that did not arrive in time.
    BodyReadTimeout,
    /// `--max-request-bytes`: a `/sql` body over the limit.
    RequestBytes,
    /// `--max-response-bytes` (with a per-row overhead) or `--max-response-rows`.
    ResponseSize,
    /// The bounded queue in front of password hashing (`--max-password-hash-queue`).
    PasswordHashQueue,
    /// A SCRAM iteration count from a backend or secret above the cap.
    ScramIterations,
    /// `--max-endpoint-connections`: sessions and requests in flight on one endpoint.
    EndpointConnections,
    /// `--max-endpoint-rps`: new requests and sessions per second on one endpoint.
    EndpointRate,
    /// `--max-handshake-bytes`: WebSocket bytes held for clients still in their handshake
    /// (beyond 64 KiB each), all together.
    HandshakeMessageBytes,
    /// `--require-tls`: a plaintext HTTP request, `ws://` upgrade or Postgres startup.
    TlsRequired,
    /// `--max-cancel-rps-per-ip`: CancelRequests per second from one client address (an IPv6
    /// client's /64), counted on the gateway the client reached and again on a peer it is
    /// forwarded to.
    CancelRate,
}

impl Limit {
    pub const ALL: [Limit; 14] = [
        Limit::ClientConnections,
        Limit::ConnectionsPerIp,
        Limit::FirstRequestTimeout,
        Limit::HttpIdleTimeout,
        Limit::BodyReadTimeout,
        Limit::RequestBytes,
        Limit::ResponseSize,
        Limit::PasswordHashQueue,
        Limit::ScramIterations,
        Limit::EndpointConnections,
        Limit::EndpointRate,
        Limit::HandshakeMessageBytes,
        Limit::TlsRequired,
        Limit::CancelRate,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::ClientConnections => "client_connections",
            Limit::ConnectionsPerIp => "connections_per_ip",
            Limit::FirstRequestTimeout => "first_request_timeout",
            Limit::HttpIdleTimeout => "http_idle_timeout",
            Limit::BodyReadTimeout => "body_read_timeout",
            Limit::RequestBytes => "request_bytes",
            Limit::ResponseSize => "response_size",
            Limit::PasswordHashQueue => "password_hash_queue",
            Limit::ScramIterations => "scram_iterations",
            Limit::EndpointConnections => "endpoint_connections",
            Limit::EndpointRate => "endpoint_rate",
            Limit::HandshakeMessageBytes => "handshake_message_bytes",
            Limit::TlsRequired => "tls_required",
            Limit::CancelRate => "cancel_rate",
        }
    }
}

/// A client refused by a limit: what it is told, in the driver's shape (HTTP status and JSON
/// error for `/sql`, a FATAL with this SQLSTATE for sessions).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub limit: Limit,
    pub message: String,
}

impl Refused {
    pub fn new(limit: Limit, message: impl Into<String>) -> Self {
        Refused {
            limit,
            message: message.into(),
        }
    }

    /// The HTTP status of a refused `/sql` request.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self.limit {
            Limit::ClientConnections
            | Limit::ConnectionsPerIp
            | Limit::PasswordHashQueue
            | Limit::EndpointConnections
            | Limit::EndpointRate
            | Limit::HandshakeMessageBytes
            | Limit::CancelRate => StatusCode::TOO_MANY_REQUESTS,
            Limit::FirstRequestTimeout | Limit::BodyReadTimeout | Limit::HttpIdleTimeout => {
                StatusCode::REQUEST_TIMEOUT
            }
            Limit::RequestBytes => StatusCode::PAYLOAD_TOO_LARGE,
            Limit::ResponseSize => StatusCode::INSUFFICIENT_STORAGE,
            Limit::ScramIterations => StatusCode::BAD_GATEWAY,
            Limit::TlsRequired => StatusCode::FORBIDDEN,
        }
    }

    /// The SQLSTATE of a refused session.
    pub fn sqlstate(&self) -> &'static str {
        match self.limit {
            // too_many_connections
            Limit::ClientConnections
            | Limit::ConnectionsPerIp
            | Limit::PasswordHashQueue
            | Limit::EndpointConnections
            | Limit::EndpointRate
            | Limit::HandshakeMessageBytes
            | Limit::CancelRate => "53300",
            // connection_failure, as a handshake timeout
            Limit::FirstRequestTimeout | Limit::BodyReadTimeout | Limit::HttpIdleTimeout => "08006",
            // program_limit_exceeded
            Limit::RequestBytes | Limit::ResponseSize => "54000",
            // sqlclient_unable_to_establish_sqlconnection
            Limit::ScramIterations => "08001",
            // invalid_authorization_specification, as Postgres for a hostssl-only pg_hba
            Limit::TlsRequired => "28000",
        }
    }
}

/// Client connections: all of them together and per client IP address. A connection holds its
/// [`ConnectionSlot`] for as long as anything serves it, a WebSocket session after its upgrade
/// included.
pub struct ConnectionSlots {
    total: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_ip: usize,
}

/// One admitted client connection; dropping it frees its place.
pub struct ConnectionSlot {
    _total: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ConnectionSlots {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        ConnectionSlots {
            total: Arc::new(Semaphore::new(max_total)),
            per_ip: Arc::default(),
            max_per_ip,
        }
    }

    /// A place for a new connection from `ip`, or the limit it would exceed.
    pub fn admit(&self, ip: IpAddr) -> Result<ConnectionSlot, Limit> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Limit::ClientConnections)?;
        let mut per_ip = lock(&self.per_ip);
        let open = per_ip.entry(ip).or_insert(0);
        if *open >= self.max_per_ip {
            return Err(Limit::ConnectionsPerIp);
        }
        *open += 1;
        Ok(ConnectionSlot {
            _total: total,
            ip,
            per_ip: self.per_ip.clone(),
        })
    }

    #[cfg(test)]
    /// Connections open from `ip` (for tests and metrics).
    pub fn open_from(&self, ip: IpAddr) -> usize {
        lock(&self.per_ip).get(&ip).copied().unwrap_or(0)
    }
}

impl ConnectionSlot {
    /// The client's address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut per_ip = lock(&self.per_ip);
        if let Some(open) = per_ip.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// A poisoned lock only means another thread panicked while counting; the counts stay usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Authenticated requests and sessions per endpoint (with its `-pooler`).
#[derive(Clone, Copy, Debug)]
pub struct EndpointLimitsConfig {
    /// At once.
    pub max_connections: usize,
    /// Per second (`None`: no rate limit).
    pub max_rps: Option<u32>,
}

/// Per-endpoint admission of authenticated work (`/sql` requests and sessions; an endpoint and
/// its `-pooler` count together), so one busy or hostile endpoint cannot starve the rest: at
/// most `max_in_flight` at once, and new ones at most `rate` per second (a token bucket holding
/// one second's worth). Only authenticated clients are counted, so an anonymous client cannot
/// spend a victim endpoint's allowance.
pub struct EndpointLimits {
    max_in_flight: usize,
    /// Requests and sessions per second; `None`: no rate limit.
    rate: Option<f64>,
    endpoints: Arc<Mutex<HashMap<EndpointId, EndpointLoad>>>,
}

struct EndpointLoad {
    in_flight: usize,
    tokens: f64,
    refilled: Instant,
}

/// One admitted request or session on an endpoint; dropping it ends it.
pub struct EndpointSlot {
    endpoint: EndpointId,
    limits: Arc<Mutex<HashMap<EndpointId, EndpointLoad>>>,
    rate: Option<f64>,
}

impl EndpointLimits {
    pub fn new(max_in_flight: usize, rate: Option<u32>) -> Self {
        EndpointLimits {
            max_in_flight,
            rate: rate.map(f64::from),
            endpoints: Arc::default(),
        }
    }

    /// Admits one request or session on `endpoint`, or says which limit refuses it.
    pub fn admit(&self, endpoint: &EndpointId) -> Result<EndpointSlot, Refused> {
        let endpoint = endpoint.without_pooler();
        let now = Instant::now();
        let mut endpoints = lock(&self.endpoints);
        let load = endpoints
            .entry(endpoint.clone())
            .or_insert_with(|| EndpointLoad {
                in_flight: 0,
                tokens: self.rate.unwrap_or(0.0),
                refilled: now,
            });
        if load.in_flight >= self.max_in_flight {
            return Err(Refused::new(
                Limit::EndpointConnections,
                format!(
                    "too many connections to this endpoint (max is {}); please try again later",
                    self.max_in_flight
                ),
            ));
        }
        if let Some(rate) = self.rate {
            load.refill(rate, now);
            if load.tokens < 1.0 {
                return Err(Refused::new(
                    Limit::EndpointRate,
                    format!(
                        "too many requests to this endpoint (max is {rate} per second); please try again later"
                    ),
                ));
            }
            load.tokens -= 1.0;
        }
        load.in_flight += 1;
        Ok(EndpointSlot {
            endpoint,
            limits: self.endpoints.clone(),
            rate: self.rate,
        })
    }
}

impl EndpointLoad {
    fn refill(&mut self, rate: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled = now;
    }
}

impl Drop for EndpointSlot {
    fn drop(&mut self) {
        let mut endpoints = lock(&self.limits);
        let Some(load) = endpoints.get_mut(&self.endpoint) else {
            return;
        };
        load.in_flight -= 1;
        if load.in_flight > 0 {
            return;
        }
        // An idle endpoint whose bucket is full again is forgotten: a new entry starts full.
        let full = match self.rate {
            Some(rate) => {
                load.refill(rate, Instant::now());
                load.tokens >= rate
            }
            None => true,
        };
        if full {
            endpoints.remove(&self.endpoint);
        }
    }
}

/// Client addresses whose cancel buckets are remembered at once; beyond it, full buckets are
/// forgotten (at most once a second), and while none is full new addresses are refused.
const MAX_CANCEL_CLIENTS: usize = 100_000;

/// CancelRequests per client address: a token bucket of `rate` per second holding one
/// second's worth, per IPv4 address or IPv6 /64 (one host has a whole /64). A CancelRequest
/// is anonymous (its key is the only proof), so this bounds how fast one client can guess
/// keys and how many backend cancels and peer requests it can make the gateway send.
pub struct CancelLimits {
    rate: Option<f64>,
    clients: Mutex<CancelClients>,
}

#[derive(Default)]
struct CancelClients {
    buckets: HashMap<IpAddr, Bucket>,
    pruned: Option<Instant>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl CancelLimits {
    /// `rate` per second per client address; `None`: no limit.
    pub fn new(rate: Option<u32>) -> Self {
        CancelLimits {
            rate: rate.map(f64::from),
            clients: Mutex::default(),
        }
    }

    /// Takes one CancelRequest of `client`'s allowance: `false` when it has none left.
    pub fn admit(&self, client: IpAddr) -> bool {
        let Some(rate) = self.rate else {
            return true;
        };
        let now = Instant::now();
        let key = cancel_key(client);
        let mut clients = lock(&self.clients);
        if !clients.buckets.contains_key(&key) && !clients.make_room(rate, now) {
            return false;
        }
        let bucket = clients.buckets.entry(key).or_insert(Bucket {
            tokens: rate,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }
}

impl CancelClients {
    /// Whether a new address fits: below the cap, or once full buckets (those a new entry would
    /// start as) are forgotten, which is tried at most once a second.
    fn make_room(&mut self, rate: f64, now: Instant) -> bool {
        if self.buckets.len() < MAX_CANCEL_CLIENTS {
            return true;
        }
        if self
            .pruned
            .is_some_and(|at| now.saturating_duration_since(at) < std::time::Duration::from_secs(1))
        {
            return false;
        }
        self.pruned = Some(now);
        self.buckets.retain(|_, bucket| {
            let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
            bucket.tokens + elapsed * rate < rate
        });
        self.buckets.len() < MAX_CANCEL_CLIENTS
    }
}

/// The address a cancel bucket belongs to: IPv4 as is (an IPv4-mapped IPv6 address too), IPv6
/// by its /64.
fn cancel_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancels_per_client_address() {
        let limits = CancelLimits::new(Some(2));
        let a: IpAddr = [10, 0, 0, 1].into();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other_64: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert!(limits.admit(a));
        assert!(limits.admit(mapped), "the same IPv4 client");
        assert!(!limits.admit(a), "two a second");
        assert!(limits.admit(b) && limits.admit(same_64));
        assert!(!limits.admit(b), "one /64 shares a bucket");
        assert!(limits.admit(other_64), "another /64 has its own");
        std::thread::sleep(Duration::from_millis(600));
        assert!(limits.admit(a), "a token came back");
        let unlimited = CancelLimits::new(None);
        assert!((0..1000).all(|_| unlimited.admit(a)));
    }

    #[test]
    fn cancel_buckets_are_bounded() {
        let limits = CancelLimits::new(Some(1));
        let client = |n: u32| IpAddr::V4(n.into());
        for n in 0..u32::try_from(MAX_CANCEL_CLIENTS).expect("fits") {
            assert!(limits.admit(client(n)));
        }
        // Every bucket is empty: no room for a new address, and no pruning again at once.
        assert!(!limits.admit(client(u32::MAX)));
        assert_eq!(lock(&limits.clients).buckets.len(), MAX_CANCEL_CLIENTS);
        // A second later they are full again: forgotten, and the new address fits.
        std::thread::sleep(Duration::from_millis(1100));
        assert!(limits.admit(client(u32::MAX)));
        assert_eq!(lock(&limits.clients).buckets.len(), 1);
    }

    #[test]
    fn connections_per_ip_and_in_total() {
        let slots = ConnectionSlots::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = slots.admit(a).expect("first");
        let _second = slots.admit(a).expect("second");
        assert_eq!(slots.admit(a).err(), Some(Limit::ConnectionsPerIp));
        let _third = slots.admit(b).expect("another IP");
        assert_eq!(slots.admit(b).err(), Some(Limit::ClientConnections));
        drop(first);
        assert_eq!(slots.open_from(a), 1);
        let _again = slots.admit(a).expect("a place was freed");
        assert_eq!(slots.open_from(a), 2);
    }

    #[test]
    fn endpoints_are_limited_apart_and_with_their_pooler() {
        let limits = EndpointLimits::new(2, None);
        let db = EndpointId::parse("db").expect("id");
        let pooler = EndpointId::parse("db-pooler").expect("id");
        let other = EndpointId::parse("other").expect("id");
        let one = limits.admit(&db).expect("one");
        let _two = limits.admit(&pooler).expect("two");
        let refused = limits.admit(&db).err().expect("full");
        assert_eq!(refused.limit, Limit::EndpointConnections);
        assert_eq!(refused.sqlstate(), "53300");
        assert_eq!(refused.status().as_u16(), 429);
        let _elsewhere = limits
            .admit(&other)
            .expect("another endpoint is not affected");
        drop(one);
        let _three = limits.admit(&db).expect("freed");
    }

    #[test]
    fn endpoint_rate() {
        let limits = EndpointLimits::new(100, Some(3));
        let db = EndpointId::parse("db").expect("id");
        for _ in 0..3 {
            drop(limits.admit(&db).expect("within the burst"));
        }
        let refused = limits.admit(&db).err().expect("over the rate");
        assert_eq!(refused.limit, Limit::EndpointRate);
        std::thread::sleep(Duration::from_millis(400));
        drop(limits.admit(&db).expect("a token came back"));
    }
}
