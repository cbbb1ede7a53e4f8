//! The gateway binary as a real process, for what only a process shows: signals and flags.
//!
//! - SIGHUP reloads the TLS certificate: a new handshake sees the new certificate, one made
//!   before saw the old; a reload of files that do not match keeps the current certificate.
//! - SIGTERM drains: an in-flight request finishes, `/readyz` answers 503, new connections are
//!   refused, and the process exits 0; a second SIGTERM, or SIGINT, exits at once (README
//!   "Signals").
//! - `--max-client-connections`: the connection over the cap is told so in its own protocol
//!   (HTTP 429 with the driver's JSON error, FATAL 53300), and a place freed is given again.
//!
//! Each test starts its own gateway (`CARGO_BIN_EXE_gateway`) with a static route to the test
//! Postgres, on port-0 listeners whose addresses it reads from the "gateway started" log line.

mod support;

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use support::postgres;
use support::raw::{Fields, Raw};

const CONN: &str = "postgres://postgres:postgres@db.localtest.me/main";
/// A bound for what should happen promptly; only ever waited out when a test fails.
const WITHIN: Duration = Duration::from_secs(15);
/// How long "at once" may take for a process to exit.
const AT_ONCE: Duration = Duration::from_secs(3);
const OVER_THE_CAP: &str = "too many connections to the gateway; please try again later";

/// A gateway process, killed when dropped.
struct Gateway {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Gateway {
    /// The gateway binary routing `db` to the test Postgres, with `extra` flags; returns once
    /// `/readyz` answers 200.
    async fn start(extra: &[&str]) -> Gateway {
        let route = format!("db={}", postgres().address());
        let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        // Two port-0 listeners: a second loopback address, because the configuration refuses
        // equal listen addresses, and 127.0.0.1:0 twice would be equal.
        command
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.2:0"])
            .args(["--route", &route])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, _) in std::env::vars() {
            if name.starts_with("GATEWAY_") {
                command.env_remove(name);
            }
        }
        let mut child = command.spawn().expect("start the gateway binary");
        let pid = child.id().expect("a pid");
        let log = Arc::new(Mutex::new(String::new()));
        let (lines, mut started) = tokio::sync::mpsc::unbounded_channel();
        read_lines(
            child.stdout.take().expect("stdout"),
            log.clone(),
            lines.clone(),
        );
        read_lines(child.stderr.take().expect("stderr"), log.clone(), lines);
        let (addr, admin) = tokio::time::timeout(WITHIN, async {
            while let Some(line) = started.recv().await {
                if line.contains("gateway started") {
                    return (field(&line, "listen="), field(&line, "admin="));
                }
            }
            panic!("the gateway exited before it started");
        })
        .await
        .unwrap_or_else(|_| panic!("no 'gateway started' line; log:\n{}", log_of(&log)));
        let gw = Gateway {
            child,
            pid,
            addr,
            admin,
            log,
        };
        support::eventually("/readyz answers 200", WITHIN, || async {
            (gw.ready().await == Some(200)).then_some(())
        })
        .await;
        gw
    }

    /// `kill -<name> <pid>`.
    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {}", self.pid);
    }

    /// `/readyz`'s status, or `None` when the admin listener does not answer.
    async fn ready(&self) -> Option<u16> {
        let response = reqwest::Client::new()
            .get(format!("http://{}/readyz", self.admin))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        Some(response.status().as_u16())
    }

    /// Sum of the admin `/metrics` samples of `name` whose labels contain `labels`.
    async fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The exit status, if the process exits within `limit`.
    async fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .map(|status| status.expect("wait for the gateway"))
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Whether the process has a handler for `signal` installed (`SigCgt` in /proc).
    fn catches(&self, signal: u32) -> bool {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("/proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
    }

    fn log(&self) -> String {
        log_of(&self.log)
    }

    /// No Rust panic anywhere in the log so far.
    fn assert_no_panic(&self) {
        let log = self.log();
        assert!(!log.contains("panicked at"), "the gateway panicked:\n{log}");
    }
}

fn log_of(log: &Mutex<String>) -> String {
    log.lock().expect("log lock").clone()
}

/// Copies `stream`'s lines into `log` (without ANSI colours) and sends each one to `lines`.
fn read_lines(
    stream: impl AsyncRead + Unpin + Send + 'static,
    log: Arc<Mutex<String>>,
    lines: tokio::sync::mpsc::UnboundedSender<String>,
) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            let line = strip_ansi(&line);
            {
                let mut log = log.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
            let _ = lines.send(line);
        }
    });
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The socket address after `key` (e.g. `listen=`) in a log line.
fn field(line: &str, key: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key))
        .and_then(|value| value.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no {key}<address> in {line:?}"))
}

/// `POST /sql` as the driver sends it, on a new connection: (status, JSON body).
async fn sql(gw: &Gateway, query: &str) -> Result<(u16, Value), reqwest::Error> {
    let response = reqwest::Client::new()
        .post(format!("http://{}/sql", gw.addr))
        .header("Neon-Connection-String", CONN)
        .header("Neon-Array-Mode", "true")
        .header("Neon-Raw-Text-Output", "true")
        .body(json!({ "query": query }).to_string())
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

/// Whether `SQL text containing marker` is running in Postgres now (not counting the asking
/// connection).
async fn running_in_postgres(marker: &str) -> bool {
    let count: i64 = postgres()
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
             AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
            &[&marker],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);
    count > 0
}

/// Cancels whatever still runs `marker` in Postgres (a backend left behind by a gateway that
/// exited at once keeps sleeping: Postgres notices a vanished client only when it writes).
async fn cancel_in_postgres(marker: &str) {
    postgres()
        .client()
        .await
        .execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
            &[&marker],
        )
        .await
        .expect("cancel");
}

// --- SIGTERM, SIGINT ---------------------------------------------------------------------

#[tokio::test]
async fn sigterm_drains_an_in_flight_request_and_refuses_new_connections() {
    let mut gw = Gateway::start(&["--shutdown-timeout-seconds", "30"]).await;
    let marker = format!("drain_{}", std::process::id());
    let slow = {
        let query = format!("SELECT pg_sleep(2), '{marker}' AS m");
        let gw_addr = gw.addr;
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("http://{gw_addr}/sql"))
                .header("Neon-Connection-String", CONN)
                .header("Neon-Array-Mode", "true")
                .header("Neon-Raw-Text-Output", "true")
                .body(json!({ "query": query }).to_string())
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    // The request is in flight: Postgres runs it.
    support::eventually("the slow query runs in Postgres", WITHIN, || async {
        running_in_postgres(&marker).await.then_some(())
    })
    .await;

    gw.signal("TERM");
    // Draining: /readyz turns 503 (the admin listener still answers), and the public port
    // refuses new connections.
    support::eventually("/readyz answers 503", WITHIN, || async {
        (gw.ready().await == Some(503)).then_some(())
    })
    .await;
    let refused = support::eventually("the public port refuses", WITHIN, || async {
        match TcpStream::connect(gw.addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(e),
            _ => None,
        }
    })
    .await;
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(
        !slow.is_finished() && gw.still_running(),
        "the drain began while the request was in flight"
    );

    // The in-flight request finishes, successfully; then the gateway exits 0.
    let status = tokio::time::timeout(WITHIN, slow)
        .await
        .expect("the slow request is answered")
        .expect("task")
        .expect("the slow request succeeded at the HTTP level");
    assert_eq!(status, 200, "log:\n{}", gw.log());
    let exit = gw.exit_within(WITHIN).await.expect("exits after the drain");
    assert!(exit.success(), "{exit:?}; log:\n{}", gw.log());
    assert!(gw.log().contains("SIGTERM: draining"), "{}", gw.log());
    gw.assert_no_panic();
}

/// While a drain waits for a long request, a second SIGTERM ends the process at once; SIGINT
/// does even without a drain.
#[tokio::test]
async fn a_second_sigterm_or_sigint_exits_at_once() {
    for signals in [&["TERM", "TERM"][..], &["INT"][..]] {
        let mut gw = Gateway::start(&["--shutdown-timeout-seconds", "60"]).await;
        let marker = format!("at_once_{}_{}", signals.len(), std::process::id());
        let query = format!("SELECT pg_sleep(30), '{marker}' AS m");
        let request = {
            let gw_addr = gw.addr;
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(format!("http://{gw_addr}/sql"))
                    .header("Neon-Connection-String", CONN)
                    .body(json!({ "query": query }).to_string())
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        };
        support::eventually("the long query runs in Postgres", WITHIN, || async {
            running_in_postgres(&marker).await.then_some(())
        })
        .await;
        if signals.len() == 2 {
            gw.signal("TERM");
            // The drain has begun and would wait up to 60 s for the request.
            support::eventually("/readyz answers 503", WITHIN, || async {
                (gw.ready().await == Some(503)).then_some(())
            })
            .await;
            assert!(gw.still_running());
        }
        let sent = Instant::now();
        gw.signal(signals[signals.len() - 1]);
        let exit = gw
            .exit_within(AT_ONCE)
            .await
            .unwrap_or_else(|| panic!("{signals:?}: still running after {AT_ONCE:?}"));
        assert!(
            !exit.success(),
            "{signals:?}: an exit at once is not a clean one: {exit:?}"
        );
        assert_eq!(exit.code(), Some(130), "{signals:?}: {exit:?}");
        assert!(sent.elapsed() < AT_ONCE);
        // The request was cut, not answered.
        let answer = request.await.expect("task");
        assert!(answer.is_err(), "{signals:?}: the request got {answer:?}");
        gw.assert_no_panic();
        cancel_in_postgres(&marker).await;
    }
}

// --- SIGHUP: certificate reload ------------------------------------------------------------

/// A CA and certificates for `localhost` it signs, written where the gateway reads them.
struct Certificates {
    dir: std::path::PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    roots: rustls::RootCertStore,
}

impl Certificates {
    fn new() -> Certificates {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).expect("root");
        let dir = std::env::temp_dir().join(format!(
            "gateway-process-tls-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        Certificates {
            dir,
            issuer: Issuer::new(ca_params, ca_key),
            roots,
        }
    }

    fn cert_path(&self) -> String {
        self.dir.join("server.crt").display().to_string()
    }

    fn key_path(&self) -> String {
        self.dir.join("server.key").display().to_string()
    }

    /// A new certificate and key, as PEM, and the certificate's DER.
    fn issue(&self) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("cert");
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// Replaces the files as a renewal would: written aside, then renamed over the old ones.
    fn install(&self, cert: &str, key: &str) {
        for (name, content) in [("server.crt", cert), ("server.key", key)] {
            let aside = self.dir.join(format!("{name}.new"));
            std::fs::write(&aside, content).expect("write");
            std::fs::rename(&aside, self.dir.join(name)).expect("rename");
        }
    }

    /// The certificate a new TLS handshake with the gateway presents (DER).
    async fn presented(&self, addr: SocketAddr) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let (_, session) = tls.get_ref();
        session.peer_certificates().expect("a certificate")[0].to_vec()
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificate_for_new_handshakes() {
    let certs = Certificates::new();
    let (first_cert, first_key, first) = certs.issue();
    certs.install(&first_cert, &first_key);
    let (cert_path, key_path) = (certs.cert_path(), certs.key_path());
    let mut gw = Gateway::start(&["--tls-cert", &cert_path, "--tls-key", &key_path]).await;
    // SIGHUP's default action ends the process; the reload task installs its handler once it
    // runs, which may be just after /readyz first answers.
    support::eventually("the gateway handles SIGHUP", WITHIN, || async {
        gw.catches(1).then_some(())
    })
    .await;
    assert_eq!(certs.presented(gw.addr).await, first, "before the reload");

    let (second_cert, second_key, second) = certs.issue();
    assert_ne!(first, second);
    certs.install(&second_cert, &second_key);
    // Until told, the gateway keeps the certificate it loaded.
    assert_eq!(
        certs.presented(gw.addr).await,
        first,
        "files replaced, no SIGHUP yet"
    );
    gw.signal("HUP");
    support::eventually("a reload is counted", WITHIN, || async {
        (gw.metric("gateway_tls_reloads_total", "outcome=\"ok\"")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(certs.presented(gw.addr).await, second, "after the reload");

    // A renewal gone wrong (the first key with the second certificate) is refused: the
    // gateway keeps serving the second certificate, and says so.
    certs.install(&second_cert, &first_key);
    gw.signal("HUP");
    support::eventually("a failed reload is counted", WITHIN, || async {
        (gw.metric("gateway_tls_reloads_total", "outcome=\"error\"")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(
        certs.presented(gw.addr).await,
        second,
        "after a failed reload"
    );
    assert!(
        gw.log()
            .contains("TLS reload failed; keeping the current certificate"),
        "{}",
        gw.log()
    );
    // Still serving, over TLS and in the clear.
    let (status, body) = sql(&gw, "SELECT 'after reloads'").await.expect("request");
    assert_eq!((status, &body["rows"]), (200, &json!([["after reloads"]])));
    assert!(gw.still_running());
    gw.assert_no_panic();
}

// --- --max-client-connections ----------------------------------------------------------------

/// One HTTP/1.1 exchange on a kept-alive connection: (status, JSON body).
async fn http_on(tcp: &mut TcpStream, query: &str) -> (u16, Value) {
    let body = json!({ "query": query }).to_string();
    let head = format!(
        "POST /sql HTTP/1.1\r\nhost: x\r\nneon-connection-string: {CONN}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    tcp.write_all(body.as_bytes()).await.expect("body");
    let mut buf = Vec::new();
    let (head_end, length) = loop {
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await.expect("read");
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .expect("content-length");
            break (end + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let status = String::from_utf8_lossy(&buf[9..12])
        .parse()
        .expect("status");
    let json = serde_json::from_slice(&buf[head_end..head_end + length]).expect("JSON body");
    (status, json)
}

/// Reads until the server closes; what it sent.
async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(WITHIN, tcp.read_to_end(&mut all))
        .await
        .expect("the server closes")
        .expect("read");
    all
}

fn startup(user: &str) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", user), ("database", "main")],
        &mut out,
    )
    .expect("startup");
    out.to_vec()
}

#[tokio::test]
async fn max_client_connections_refuses_the_next_one_in_its_protocol() {
    let gw = Gateway::start(&["--max-client-connections", "3"]).await;
    // Three connections of three kinds hold the three places: an HTTP/1.1 connection kept
    // alive after a query, a Postgres session and a WebSocket session.
    let mut keep_alive = TcpStream::connect(gw.addr).await.expect("connect");
    assert_eq!(http_on(&mut keep_alive, "SELECT 1").await.0, 200);
    let mut tcp = Raw::new(TcpStream::connect(gw.addr).await.expect("connect"));
    tcp.login(&[("user", "postgres"), ("database", "main")], "postgres")
        .await
        .expect("TCP session");
    let url = format!("ws://{}/v2?address=db.localtest.me:5432", gw.addr);
    let (ws, _) =
        tokio_tungstenite::client_async(url, TcpStream::connect(gw.addr).await.expect("connect"))
            .await
            .expect("WebSocket upgrade");
    let mut ws = Raw::new(gateway::WsStream::new(ws));
    ws.login(&[("user", "postgres"), ("database", "main")], "postgres")
        .await
        .expect("WebSocket session");

    // The fourth: an HTTP client hears 429 with the driver's error shape...
    let mut over = TcpStream::connect(gw.addr).await.expect("connect");
    over.write_all(b"POST /sql HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .expect("request");
    let answer = read_to_close(&mut over).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 429 "), "{text}");
    let body: Value = serde_json::from_str(&text[text.find("\r\n\r\n").expect("head") + 4..])
        .expect("a JSON body");
    assert_eq!(body["message"], OVER_THE_CAP, "{body}");
    assert_eq!((&body["code"], &body["severity"]), (&json!(""), &json!("")));
    // ...and a Postgres client FATAL 53300 with the same text.
    let mut over = Raw::new(TcpStream::connect(gw.addr).await.expect("connect"));
    over.send(&startup("postgres")).await;
    let error: Fields = tokio::time::timeout(WITHIN, over.error())
        .await
        .expect("a FATAL");
    assert_eq!(
        (
            error[&'S'].as_str(),
            error[&'C'].as_str(),
            error[&'M'].as_str()
        ),
        ("FATAL", "53300", OVER_THE_CAP)
    );
    assert!(over.recv().await.is_none(), "then the connection closes");
    assert_eq!(
        gw.metric("gateway_limit_hits_total", "limit=\"client_connections\"")
            .await,
        2.0
    );

    // The three are still served.
    assert_eq!(http_on(&mut keep_alive, "SELECT 2").await.0, 200);
    assert_eq!(tcp.query("SELECT 'tcp'").await.expect("query"), ["tcp"]);
    assert_eq!(ws.query("SELECT 'ws'").await.expect("query"), ["ws"]);

    // Closing one frees its place: a new connection is admitted.
    drop(keep_alive);
    let (status, body) = support::eventually("a place is free again", WITHIN, || async {
        let (status, body) = sql(&gw, "SELECT 'admitted'").await.ok()?;
        (status == 200).then_some((status, body))
    })
    .await;
    assert_eq!((status, &body["rows"]), (200, &json!([["admitted"]])));
    gw.assert_no_panic();
}
