//! JWT validation against key sets served over real sockets: a JWKS server on 127.0.0.1
//! (port 0), the validator fetching from it with `allow_http_loopback`. Covers fetching and
//! caching (rotation, failures kept out, redirects, body cap, timeouts, rate limit,
//! single-flight) and that token-named URLs (`jku`, `x5u`) are never fetched. The parser and
//! the claims corpus are unit-tested in `gateway/src/auth/jwt`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use gateway::{EndpointId, JwtConfig, JwtError, JwtRule, JwtValidator, Metrics};
use ring::rand::SystemRandom;
use ring::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Value};
use wake_api::proxy::JwksSettings;

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Signer {
    fn rsa() -> Signer {
        let der = include_bytes!("data/jwt/rsa2048-b.pk8.der");
        Signer::Rsa(RsaKeyPair::from_pkcs8(der).expect("an RSA key"))
    }

    fn ec() -> Signer {
        let rng = SystemRandom::new();
        let alg = &sig::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generated");
        Signer::Ec(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("an EC key"))
    }

    fn ed() -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generated");
        Signer::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("an Ed25519 key"))
    }

    fn alg(&self) -> &'static str {
        match self {
            Signer::Rsa(_) => "RS256",
            Signer::Ec(_) => "ES256",
            Signer::Ed(_) => "EdDSA",
        }
    }

    fn jwk(&self, kid: &str) -> Value {
        match self {
            Signer::Rsa(key) => {
                let public = sig::RsaPublicKeyComponents::<Vec<u8>>::from(key.public());
                json!({"kty": "RSA", "kid": kid, "n": b64(&public.n), "e": b64(&public.e)})
            }
            Signer::Ec(key) => {
                let point = key.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": kid,
                       "x": b64(&point[1..33]), "y": b64(&point[33..])})
            }
            Signer::Ed(key) => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(key.public_key().as_ref())})
            }
        }
    }

    /// A token for `kid` with `extra` header parameters.
    fn token_with(&self, kid: &str, extra: Value) -> String {
        let mut header = json!({"alg": self.alg(), "kid": kid});
        for (k, v) in extra.as_object().expect("an object") {
            header[k] = v.clone();
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let claims = json!({"sub": "user-1", "exp": now + 600});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let signature = match self {
            Signer::Rsa(key) => {
                let mut out = vec![0; key.public().modulus_len()];
                key.sign(&sig::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut out)
                    .expect("signed");
                out
            }
            Signer::Ec(key) => key
                .sign(&rng, input.as_bytes())
                .expect("signed")
                .as_ref()
                .to_vec(),
            Signer::Ed(key) => key.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", b64(&signature))
    }

    fn token(&self, kid: &str) -> String {
        self.token_with(kid, json!({}))
    }
}

/// What the JWKS server answers.
#[derive(Clone)]
enum Answer {
    Keys(Value),
    Status(StatusCode),
    Redirect(String),
    /// A body of this many bytes (a valid set padded with a long unknown member).
    Large(usize),
    /// A chunked body of this many bytes (no content-length).
    Streamed(usize),
    /// The keys, after this long.
    Slow(Duration, Value),
}

#[derive(Clone)]
struct Server {
    answer: Arc<Mutex<Answer>>,
    requests: Arc<AtomicUsize>,
    redirected: Arc<AtomicUsize>,
    url: String,
}

impl Server {
    fn set(&self, answer: Answer) {
        *self.answer.lock().expect("lock") = answer;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn keys(&self, keys: Vec<Value>) {
        self.set(Answer::Keys(json!({ "keys": keys })));
    }
}

async fn jwks(State(server): State<Server>) -> Response {
    server.requests.fetch_add(1, Ordering::SeqCst);
    let answer = server.answer.lock().expect("lock").clone();
    match answer {
        Answer::Keys(keys) => axum::Json(keys).into_response(),
        Answer::Status(status) => (status, "<html>down</html>").into_response(),
        Answer::Redirect(to) => (StatusCode::FOUND, [(header::LOCATION, to)]).into_response(),
        Answer::Large(size) => {
            let body = format!(r#"{{"keys":[],"pad":"{}"}}"#, "x".repeat(size));
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Answer::Streamed(size) => {
            let chunks = std::iter::once(r#"{"keys":[],"pad":""#.to_owned())
                .chain(std::iter::repeat_n("x".repeat(1024), size / 1024))
                .chain(std::iter::once(r#""}"#.to_owned()))
                .map(Ok::<_, std::io::Error>);
            let body = axum::body::Body::from_stream(futures_util::stream::iter(chunks));
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Answer::Slow(delay, keys) => {
            tokio::time::sleep(delay).await;
            axum::Json(keys).into_response()
        }
    }
}

async fn redirected(State(server): State<Server>) -> Response {
    server.redirected.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({"keys": []})).into_response()
}

/// A JWKS server on 127.0.0.1, port 0, serving `keys` at `/jwks`.
async fn serve(keys: Vec<Value>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = Server {
        answer: Arc::new(Mutex::new(Answer::Keys(json!({ "keys": keys })))),
        requests: Arc::default(),
        redirected: Arc::default(),
        url: format!("http://{addr}/jwks"),
    };
    let app = Router::new()
        .route("/jwks", get(jwks))
        .route("/elsewhere", get(redirected))
        .with_state(server.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    server
}

fn rule(id: &str, url: &str) -> JwtRule {
    let settings = JwksSettings {
        id: id.into(),
        jwks_url: url.into(),
        provider_name: "test".into(),
        jwt_audience: None,
        role_names: vec!["authenticated".into()],
        jwt_issuer: None,
        algorithms: vec![],
        jwks: None,
    };
    JwtRule::from_settings(&settings, true).expect("a rule")
}

fn config() -> JwtConfig {
    JwtConfig {
        allow_http_loopback: true,
        ..JwtConfig::default()
    }
}

struct Setup {
    server: Server,
    rules: Vec<JwtRule>,
    metrics: Metrics,
    validator: Arc<JwtValidator>,
}

async fn setup(keys: Vec<Value>, config: JwtConfig) -> Setup {
    let server = serve(keys).await;
    let metrics = Metrics::new();
    let validator = Arc::new(JwtValidator::new(config, &metrics));
    Setup {
        rules: vec![rule("rule-1", &server.url)],
        server,
        metrics,
        validator,
    }
}

fn endpoint() -> EndpointId {
    EndpointId::parse("ep-jwt-1").expect("an endpoint id")
}

impl Setup {
    async fn check(&self, token: &str) -> Result<gateway::VerifiedJwt, JwtError> {
        self.validator
            .validate(&endpoint(), &self.rules, "authenticated", token)
            .await
    }

    /// The value of one exported series, e.g. `gateway_jwks_fetches_total{outcome="ok"}`.
    fn metric(&self, series: &str) -> u64 {
        let text = self.metrics.encode();
        let line = text
            .lines()
            .find(|line| line.starts_with(series))
            .unwrap_or_else(|| panic!("{series} in\n{text}"));
        line[series.len()..].trim().parse().expect("a number")
    }

    fn fetches(&self, outcome: &str) -> u64 {
        self.metric(&format!(
            "gateway_jwks_fetches_total{{outcome=\"{outcome}\"}}"
        ))
    }

    fn validations(&self, outcome: &str) -> u64 {
        self.metric(&format!(
            "gateway_jwt_validations_total{{outcome=\"{outcome}\"}}"
        ))
    }
}

#[tokio::test]
async fn each_algorithm_from_a_fetched_set_and_the_cache_serves_later_checks() {
    let (rsa, ec, ed) = (Signer::rsa(), Signer::ec(), Signer::ed());
    let enc = json!({"kty": "RSA", "kid": "enc", "use": "enc", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"});
    let s = setup(
        vec![enc, rsa.jwk("rsa"), ec.jwk("ec"), ed.jwk("ed")],
        config(),
    )
    .await;
    for (signer, kid) in [(&rsa, "rsa"), (&ec, "ec"), (&ed, "ed")] {
        let verified = s.check(&signer.token(kid)).await.expect(kid);
        assert_eq!(verified.rule_id, "rule-1");
        assert_eq!(verified.claims["sub"], "user-1");
    }
    assert_eq!(s.server.requests(), 1);
    assert_eq!(s.fetches("ok"), 1);
    assert_eq!(s.metric("gateway_jwks_cache_total{result=\"miss\"}"), 1);
    assert_eq!(s.metric("gateway_jwks_cache_total{result=\"hit\"}"), 2);
    assert_eq!(s.validations("ok"), 3);
}

#[tokio::test]
async fn urls_in_the_token_are_never_fetched() {
    let victim = Signer::ec();
    let s = setup(vec![victim.jwk("ec")], config()).await;
    let attacker = Signer::ec();
    let evil = serve(vec![attacker.jwk("evil")]).await;
    for kid in ["evil", "ec"] {
        let extra = json!({"jku": evil.url, "x5u": evil.url, "jwk": attacker.jwk(kid)});
        let refused = s.check(&attacker.token_with(kid, extra)).await;
        assert!(refused.is_err(), "{kid}");
    }
    assert_eq!(evil.requests(), 0);
    assert_eq!(s.validations("unknown_key"), 1);
    assert_eq!(s.validations("bad_signature"), 1);
}

#[tokio::test]
async fn rotation_a_new_kid_is_fetched_and_a_removed_one_refused() {
    let config = JwtConfig {
        min_refetch: Duration::from_millis(200),
        ..config()
    };
    let (old, new) = (Signer::ec(), Signer::rsa());
    let s = setup(vec![old.jwk("old")], config).await;
    s.check(&old.token("old")).await.expect("the old key");
    s.server.keys(vec![new.jwk("new")]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    s.check(&new.token("new"))
        .await
        .expect("the new key, refetched");
    assert_eq!(s.server.requests(), 2);
    assert_eq!(s.check(&old.token("old")).await, Err(JwtError::UnknownKey));
    // The old kid is unknown now; within the interval no further fetch is made for it.
    assert_eq!(s.server.requests(), 2);
}

#[tokio::test]
async fn the_last_good_set_is_kept_when_the_jwks_fails() {
    let config = JwtConfig {
        refresh_after: Duration::from_millis(50),
        max_age: Duration::from_millis(100),
        min_refetch: Duration::ZERO,
        ..config()
    };
    let key = Signer::ec();
    let s = setup(vec![key.jwk("k")], config).await;
    s.check(&key.token("k")).await.expect("first fetch");
    for failure in [
        Answer::Status(StatusCode::INTERNAL_SERVER_ERROR),
        Answer::Keys(json!({"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]})),
        Answer::Keys(json!("not a set")),
    ] {
        s.server.set(failure);
        tokio::time::sleep(Duration::from_millis(120)).await;
        // Past max_age: a blocking refresh, which fails; the last good set is used.
        s.check(&key.token("k")).await.expect("the last good set");
    }
    assert_eq!(s.fetches("bad_status"), 1);
    assert_eq!(s.fetches("invalid"), 2);
    assert_eq!(s.fetches("ok"), 1);
    // An unknown kid while the JWKS is down: unknown, not unavailable (the set is known).
    assert_eq!(
        s.check(&key.token("other")).await,
        Err(JwtError::UnknownKey)
    );
}

#[tokio::test]
async fn a_stale_set_is_refreshed_in_the_background() {
    let config = JwtConfig {
        refresh_after: Duration::from_millis(100),
        min_refetch: Duration::ZERO,
        ..config()
    };
    let key = Signer::ed();
    let s = setup(vec![key.jwk("k")], config).await;
    s.check(&key.token("k")).await.expect("first fetch");
    s.server.set(Answer::Slow(
        Duration::from_millis(300),
        json!({"keys": [key.jwk("k")]}),
    ));
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Served from the cache at once while the refresh waits for the slow server.
    let started = std::time::Instant::now();
    for _ in 0..5 {
        s.check(&key.token("k")).await.expect("the cached set");
    }
    assert!(started.elapsed() < Duration::from_millis(200));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.server.requests(), 2, "one background refresh");
    assert_eq!(s.fetches("ok"), 2);
    assert_eq!(s.metric("gateway_jwks_cache_total{result=\"miss\"}"), 1);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let key = Signer::ec();
    let s = setup(vec![], config()).await;
    let elsewhere = s.server.url.replace("/jwks", "/elsewhere");
    s.server.set(Answer::Redirect(elsewhere));
    assert_eq!(
        s.check(&key.token("k")).await,
        Err(JwtError::KeysUnavailable)
    );
    assert_eq!(s.server.redirected.load(Ordering::SeqCst), 0);
    assert_eq!(s.fetches("bad_status"), 1);
    assert_eq!(s.validations("keys_unavailable"), 1);
}

#[tokio::test]
async fn a_body_over_the_cap_is_refused() {
    let key = Signer::ec();
    let s = setup(vec![], config()).await;
    s.server.set(Answer::Large(64 * 1024));
    assert_eq!(
        s.check(&key.token("k")).await,
        Err(JwtError::KeysUnavailable)
    );
    assert_eq!(s.fetches("too_large"), 1);
    // Without a content-length, the cap applies as the body arrives.
    let s = setup(vec![], config()).await;
    s.server.set(Answer::Streamed(1 << 20));
    assert_eq!(
        s.check(&key.token("k")).await,
        Err(JwtError::KeysUnavailable)
    );
    assert_eq!(s.fetches("too_large"), 1);
    // Just under the cap is read (and holds no usable key here).
    let s = setup(vec![], config()).await;
    s.server.set(Answer::Streamed(60 * 1024));
    assert_eq!(
        s.check(&key.token("k")).await,
        Err(JwtError::KeysUnavailable)
    );
    assert_eq!(s.fetches("invalid"), 1);
}

#[tokio::test]
async fn a_slow_jwks_times_out() {
    let config = JwtConfig {
        fetch_timeout: Duration::from_millis(200),
        ..config()
    };
    let key = Signer::ec();
    let s = setup(vec![], config).await;
    s.server.set(Answer::Slow(
        Duration::from_secs(5),
        json!({"keys": [key.jwk("k")]}),
    ));
    let started = std::time::Instant::now();
    assert_eq!(
        s.check(&key.token("k")).await,
        Err(JwtError::KeysUnavailable)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(s.fetches("timeout"), 1);
    // Down and rate-limited: the next check does not wait for another fetch.
    assert_eq!(
        s.check(&key.token("k")).await,
        Err(JwtError::KeysUnavailable)
    );
    assert_eq!(s.server.requests(), 1);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_one_fetch_per_interval() {
    let config = JwtConfig {
        min_refetch: Duration::from_millis(300),
        ..config()
    };
    let key = Signer::ec();
    let s = setup(vec![key.jwk("k")], config).await;
    s.check(&key.token("k")).await.expect("first fetch");
    // Within the interval of the first fetch: no refetch at all.
    for i in 0..50 {
        assert_eq!(
            s.check(&key.token(&format!("r{i}"))).await,
            Err(JwtError::UnknownKey)
        );
    }
    assert_eq!(s.server.requests(), 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    for i in 0..200 {
        assert_eq!(
            s.check(&key.token(&format!("random-{i}"))).await,
            Err(JwtError::UnknownKey)
        );
    }
    assert_eq!(s.server.requests(), 2, "one refetch for 200 unknown kids");
    assert_eq!(s.validations("unknown_key"), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_share_one_fetch() {
    let config = JwtConfig {
        min_refetch: Duration::from_millis(100),
        ..config()
    };
    let key = Signer::ec();
    let s = setup(vec![key.jwk("k")], config).await;
    s.server.set(Answer::Slow(
        Duration::from_millis(100),
        json!({"keys": [key.jwk("k")]}),
    ));
    let run = |kid: &'static str| {
        let checks = (0..50).map(|_| {
            let (validator, rules, token) = (s.validator.clone(), s.rules.clone(), key.token(kid));
            tokio::spawn(async move {
                validator
                    .validate(&endpoint(), &rules, "authenticated", &token)
                    .await
            })
        });
        futures_util::future::join_all(checks)
    };
    // A cold cache: 50 first checks, one fetch.
    for check in run("k").await {
        check.expect("task").expect("valid");
    }
    assert_eq!(s.server.requests(), 1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // 50 concurrent unknown kids: one refetch.
    for check in run("unknown").await {
        assert_eq!(check.expect("task"), Err(JwtError::UnknownKey));
    }
    assert_eq!(s.server.requests(), 2);
}

/// A client that goes away during the first fetch does not cancel it: the next check gets
/// its result instead of a rate-limited "unavailable".
#[tokio::test]
async fn a_cancelled_check_does_not_cancel_the_fetch() {
    let key = Signer::ec();
    let s = setup(vec![], config()).await;
    s.server.set(Answer::Slow(
        Duration::from_millis(200),
        json!({"keys": [key.jwk("k")]}),
    ));
    let token = key.token("k");
    let gone = tokio::time::timeout(Duration::from_millis(50), s.check(&token)).await;
    assert!(gone.is_err(), "cancelled while fetching");
    s.check(&token).await.expect("the fetch went on");
    assert_eq!(s.server.requests(), 1);
}

#[tokio::test]
async fn rules_sharing_a_kid_are_ambiguous() {
    let (a, b) = (Signer::ec(), Signer::ec());
    let mut s = setup(vec![a.jwk("same")], config()).await;
    let other = serve(vec![b.jwk("same")]).await;
    s.rules.push(rule("rule-2", &other.url));
    assert_eq!(s.check(&a.token("same")).await, Err(JwtError::AmbiguousKey));
    assert_eq!(s.validations("ambiguous_key"), 1);
}

/// https goes through rustls (ring) with the compiled-in webpki roots: a TLS handshake is made
/// (no panic for want of a crypto provider), and a self-signed certificate is refused.
#[tokio::test]
async fn https_uses_rustls_and_refuses_an_untrusted_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let key =
        rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("a key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("a server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let (accepted, finished) = (handshakes.clone(), Arc::new(AtomicUsize::new(0)));
    let completed = finished.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            if acceptor.accept(stream).await.is_ok() {
                completed.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let metrics = Metrics::new();
    // https to a loopback host: allowed with private addresses (the http flag is off).
    let config = JwtConfig {
        allow_private_addresses: true,
        ..JwtConfig::default()
    };
    let validator = JwtValidator::new(config, &metrics);
    let rules = vec![rule("tls", &format!("https://localhost:{port}/jwks"))];
    let token = Signer::ec().token("k");
    let refused = validator
        .validate(&endpoint(), &rules, "authenticated", &token)
        .await;
    assert_eq!(refused, Err(JwtError::KeysUnavailable));
    assert_eq!(handshakes.load(Ordering::SeqCst), 1, "a TLS client hello");
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "the certificate was refused"
    );
    assert!(metrics
        .encode()
        .contains("gateway_jwks_fetches_total{outcome=\"error\"} 1"));
}

/// A rule's URL is the tenant's: by default nothing but public addresses is fetched from,
/// whether the URL names a private or loopback address or a name that resolves to one; the
/// server listening there is never reached.
#[tokio::test]
async fn private_and_loopback_hosts_are_not_fetched_from_by_default() {
    let signer = Signer::ec();
    let server = serve(vec![signer.jwk("k")]).await;
    let port = server
        .url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/jwks")
        .to_owned();
    let metrics = Metrics::new();
    let validator = JwtValidator::new(JwtConfig::default(), &metrics);
    let urls = [
        format!("https://127.0.0.1:{port}/jwks"),
        format!("https://localhost:{port}/jwks"),
        format!("https://[::ffff:127.0.0.1]:{port}/jwks"),
        format!("https://[::1]:{port}/jwks"),
        "https://10.0.0.1/jwks".to_owned(),
        "https://169.254.169.254/latest/meta-data".to_owned(),
        "https://[fd00::1]/jwks".to_owned(),
        "https://0.0.0.0/jwks".to_owned(),
    ];
    for (i, url) in urls.iter().enumerate() {
        let rules = vec![rule(&format!("r{i}"), url)];
        let refused = validator
            .validate(&endpoint(), &rules, "authenticated", &signer.token("k"))
            .await;
        assert_eq!(refused, Err(JwtError::KeysUnavailable), "{url}");
    }
    assert_eq!(server.requests(), 0);
    let expected = format!(
        "gateway_jwks_fetches_total{{outcome=\"not_permitted\"}} {}",
        urls.len()
    );
    assert!(metrics.encode().contains(&expected), "{expected}");

    // Allowed by the operator, the same server is reached (over http, with the loopback flag).
    let allowed = JwtValidator::new(config(), &Metrics::new());
    let rules = vec![rule("local", &server.url)];
    allowed
        .validate(&endpoint(), &rules, "authenticated", &signer.token("k"))
        .await
        .expect("fetched from loopback when allowed");
    assert_eq!(server.requests(), 1);
}
