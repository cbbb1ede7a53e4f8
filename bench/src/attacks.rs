//! The hostile clients of the flood test (scenario 7): each attack runs from its own source
//! address (127.0.0.2 by default, so a per-client-IP limit in the gateway can tell it from the
//! victim on 127.0.0.1) until it is told to stop, then closes every socket it opened. Counts
//! (connections, streams, messages) are fixed by the plan; the time by the caller. What the
//! gateway did to the attacker (answers, resets, closed connections) is tallied for the report.
//!
//! The clients are as small as the attacks allow: raw bytes for the HTTP/2 preface, frames
//! and HPACK, for stalled HTTP/1.1 bodies and for the WebSocket frame header (then a stream
//! of zeros, so the loadgen itself holds no big message); hyper's HTTP/1.1 client where a
//! request has to be complete; the loadgen's own WebSocket sessions for the connection cap.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rand::distributions::{Alphanumeric, DistString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::client::{connect_tcp, Dial, Session, Timeouts, DATABASE, PASSWORD, USER};

/// Connects in flight at once while an attack opens its connections: well inside the
/// gateway's accept backlog, so none waits for a SYN retry.
const CONNECTS_IN_FLIGHT: usize = 256;
/// Bound on one attacker connect (and on a WebSocket upgrade's answer).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After the stop, how long the attack's tasks get to close before they are aborted.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// After an error, or after the gateway ended an attempt early, a task waits this long before
/// its next attempt: the attacks are about what one attempt costs, not about connection rate.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// One attack and its size.
#[derive(Clone, Debug)]
pub enum Attack {
    /// `/sql` requests with random passwords for a role whose SCRAM verifier asks for a huge
    /// iteration count, on the attacker's endpoint, which must be a static route: the gateway
    /// logs in to Postgres with the cleartext password, so it runs PBKDF2 with the count
    /// Postgres sends. One request per task in flight; a new one when the previous is answered.
    IterationBomb { role: String, concurrency: usize },
    /// Authenticated `/sql` requests whose statement returns a flood of rows that are (nearly)
    /// empty, so a byte budget on the response does not stop them.
    RowFlood {
        sql: &'static str,
        concurrency: usize,
    },
    /// Connections that send `PRI * HTTP/2.0\r\n` (part of the HTTP/2 preface) and stall.
    PriStall { connections: usize },
    /// Connections that complete the HTTP/2 preface and SETTINGS exchange (and answer PINGs),
    /// then do nothing.
    IdleH2 { connections: usize },
    /// `streams` authenticated `POST /sql` streams on each HTTP/2 connection, all opened at
    /// once (whatever the server's stream limit says), each promising a body that never comes.
    H2Streams { connections: usize, streams: usize },
    /// Authenticated `POST /sql` with a `content_length` body sent one byte per second.
    Trickle {
        connections: usize,
        content_length: usize,
    },
    /// `/sql` bodies of `bytes` bytes (`{"query":"SELECT 1","params":[0,0,…]}`) with a wrong
    /// password for endpoint `db`, back to back on each connection.
    HugeJson { concurrency: usize, bytes: usize },
    /// WebSocket upgrades, then one binary message of `bytes` bytes before any startup
    /// packet, all but its last byte sent, then held; once the gateway cuts one off, another
    /// after [`RETRY_PAUSE`].
    WsOversize { concurrency: usize, bytes: usize },
    /// Authenticated WebSocket sessions (through endpoint `db`'s PgBouncer), held open.
    WsSessions { sessions: usize },
}

/// Where the attacker goes, and from where.
#[derive(Clone, Debug)]
pub struct Target {
    pub gateway: SocketAddr,
    /// The attacker's source address.
    pub from: IpAddr,
    /// The endpoint of its authenticated attacks (as role `postgres`): its own, so that the
    /// victim's endpoint limits are the victim's alone; `db` when there is none.
    pub endpoint: String,
}

impl Target {
    async fn connect(&self) -> anyhow::Result<TcpStream> {
        timeout(CONNECT_TIMEOUT, connect_tcp(self.gateway, Some(self.from)))
            .await
            .map_err(|_| anyhow!("connect timed out"))?
            .with_context(|| format!("connecting from {}", self.from))
    }

    /// The connection string for `role`:`password` on `endpoint`.
    fn connection_string(&self, endpoint: &str, role: &str, password: &str) -> String {
        format!(
            "postgres://{role}:{password}@{endpoint}.localtest.me:{}/{DATABASE}",
            self.gateway.port()
        )
    }
}

/// What the attacker saw: counts by outcome, and the first error.
#[derive(Default)]
pub struct Tally {
    counts: Mutex<BTreeMap<String, u64>>,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    pub fn add(&self, what: impl Into<String>, n: u64) {
        let mut counts = self.counts.lock().expect("tally lock poisoned");
        *counts.entry(what.into()).or_default() += n;
    }

    pub fn error(&self, error: impl Display) {
        self.add("errors", 1);
        let mut first = self.first_error.lock().expect("tally lock poisoned");
        first.get_or_insert_with(|| format!("{error:#}"));
    }

    /// "3 × connected, 1 × closed by the gateway; first error: …".
    pub fn summary(&self) -> String {
        let counts = self.counts.lock().expect("tally lock poisoned");
        let mut text = if counts.is_empty() {
            "nothing happened".to_string()
        } else {
            counts
                .iter()
                .map(|(what, n)| format!("{what}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(e) = self
            .first_error
            .lock()
            .expect("tally lock poisoned")
            .as_ref()
        {
            text.push_str(&format!("; first error: {e}"));
        }
        text
    }
}

/// Runs `attack` until `stop`, then closes its connections (bounded by [`CLOSE_TIMEOUT`]).
pub async fn run(attack: Attack, target: Target, stop: CancellationToken, tally: Arc<Tally>) {
    let mut tasks = JoinSet::new();
    let connects = Arc::new(Semaphore::new(CONNECTS_IN_FLIGHT));
    match attack {
        Attack::IterationBomb { role, concurrency } => {
            for _ in 0..concurrency {
                let (target, tally, role) = (target.clone(), tally.clone(), role.clone());
                tasks.spawn(async move {
                    let body = Bytes::from_static(br#"{"query":"SELECT 1","params":[]}"#);
                    loop {
                        let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 24);
                        let url = target.connection_string(&target.endpoint, &role, &password);
                        if let Err(e) = one_request(&target, &url, body.clone(), &tally).await {
                            tally.error(e);
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                    }
                });
            }
        }
        Attack::RowFlood { sql, concurrency } => {
            let url = target.connection_string(&target.endpoint, USER, PASSWORD);
            let body = Bytes::from(serde_json::json!({ "query": sql, "params": [] }).to_string());
            for _ in 0..concurrency {
                let (target, tally) = (target.clone(), tally.clone());
                let (url, body) = (url.clone(), body.clone());
                tasks.spawn(async move {
                    loop {
                        if let Err(e) = one_request(&target, &url, body.clone(), &tally).await {
                            tally.error(e);
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                    }
                });
            }
        }
        Attack::HugeJson { concurrency, bytes } => {
            // A wrong password (an attacker needs none): a gateway that reads and parses the
            // body before it checks the password pays for every byte all the same.
            let url = target.connection_string("db", USER, "not-the-password");
            let body = huge_json(bytes);
            for _ in 0..concurrency {
                let (target, tally, body) = (target.clone(), tally.clone(), body.clone());
                let url = url.clone();
                tasks.spawn(async move {
                    loop {
                        if let Err(e) = keep_alive_requests(&target, &url, &body, &tally).await {
                            tally.error(e);
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                    }
                });
            }
        }
        Attack::PriStall { connections } => {
            for _ in 0..connections {
                let (target, tally, connects) = (target.clone(), tally.clone(), connects.clone());
                tasks.spawn(async move {
                    let permit = connects.acquire_owned().await;
                    let mut tcp = match target.connect().await {
                        Ok(tcp) => tcp,
                        Err(e) => return tally.error(e),
                    };
                    if let Err(e) = tcp.write_all(b"PRI * HTTP/2.0\r\n").await {
                        return tally.error(e);
                    }
                    drop(permit);
                    tally.add("sent `PRI * HTTP/2.0\\r\\n` and stalled", 1);
                    until_closed(&mut tcp, &tally).await;
                });
            }
        }
        Attack::IdleH2 { connections } => {
            for _ in 0..connections {
                let (target, tally, connects) = (target.clone(), tally.clone(), connects.clone());
                tasks.spawn(async move {
                    let permit = connects.acquire_owned().await;
                    let (read, write) = match h2_open(&target).await {
                        Ok(halves) => halves,
                        Err(e) => return tally.error(e),
                    };
                    drop(permit);
                    tally.add("HTTP/2 connections opened", 1);
                    h2_read_frames(read, Arc::new(tokio::sync::Mutex::new(write)), &tally).await;
                });
            }
        }
        Attack::H2Streams {
            connections,
            streams,
        } => {
            let url = target.connection_string(&target.endpoint, USER, PASSWORD);
            for _ in 0..connections {
                let (target, tally, url) = (target.clone(), tally.clone(), url.clone());
                tasks.spawn(async move {
                    if let Err(e) = h2_streams(&target, &url, streams, &tally).await {
                        tally.error(e);
                    }
                });
            }
        }
        Attack::Trickle {
            connections,
            content_length,
        } => {
            let url = target.connection_string(&target.endpoint, USER, PASSWORD);
            let head = format!(
                "POST /sql HTTP/1.1\r\nHost: {}\r\nNeon-Connection-String: {url}\r\n\
                 Content-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n",
                target.gateway
            );
            let head = Bytes::from(head);
            for _ in 0..connections {
                let (target, tally, connects) = (target.clone(), tally.clone(), connects.clone());
                let head = head.clone();
                tasks.spawn(async move {
                    let permit = connects.acquire_owned().await;
                    let mut tcp = match target.connect().await {
                        Ok(tcp) => tcp,
                        Err(e) => return tally.error(e),
                    };
                    if let Err(e) = tcp.write_all(&head).await {
                        return tally.error(e);
                    }
                    drop(permit);
                    tally.add("bodies trickling", 1);
                    trickle(tcp, &tally).await;
                });
            }
        }
        Attack::WsOversize { concurrency, bytes } => {
            for _ in 0..concurrency {
                let (target, tally) = (target.clone(), tally.clone());
                tasks.spawn(async move {
                    loop {
                        if let Err(e) = ws_oversize(&target, bytes, &tally).await {
                            tally.error(e);
                        }
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                });
            }
        }
        Attack::WsSessions { sessions } => {
            let tally = tally.clone();
            let dial = Dial::Ws {
                gateway: target.gateway,
                address: "db-pooler.localtest.me".into(),
                from: Some(target.from),
            };
            let timeouts = Timeouts {
                connect: CONNECT_TIMEOUT,
                query: CONNECT_TIMEOUT,
            };
            let held = Arc::new(tokio::sync::Mutex::new(Vec::<Session>::new()));
            let held_by_task = held.clone();
            tasks.spawn(async move {
                stream::iter(0..sessions)
                    .for_each_concurrent(64, |_| async {
                        match dial.connect(timeouts).await {
                            Ok(session) => {
                                tally.add("sessions opened", 1);
                                held_by_task.lock().await.push(session);
                            }
                            Err(e) => tally.error(e),
                        }
                    })
                    .await;
            });
            stop.cancelled().await;
            tasks.abort_all();
            let sessions = std::mem::take(&mut *held.lock().await);
            crate::measure::close_many(sessions, 256, Duration::from_millis(500)).await;
            return;
        }
    }
    stop.cancelled().await;
    // Dropping a task's future drops its sockets: the connections close.
    tasks.abort_all();
    let _ = timeout(CLOSE_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}

/// Aborts the task (a hyper connection) when dropped, so it ends with the request's task.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An HTTP/1.1 connection from the attacker's address.
async fn http1(target: &Target) -> anyhow::Result<(SendRequest<Full<Bytes>>, AbortOnDrop)> {
    let tcp = target.connect().await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .context("HTTP/1.1 handshake")?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, AbortOnDrop(conn)))
}

fn sql_request(
    target: &Target,
    connection_string: &str,
    body: Bytes,
) -> anyhow::Result<Request<Full<Bytes>>> {
    Ok(Request::post("/sql")
        .header(HOST, HeaderValue::from_str(&target.gateway.to_string())?)
        .header(
            "neon-connection-string",
            HeaderValue::from_str(connection_string)?,
        )
        .header("neon-raw-text-output", "true")
        .header("neon-array-mode", "true")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))?)
}

/// One `/sql` request on a new connection; the answer is read to its end and dropped (the
/// loadgen never holds a flood's answer), and tallied by status.
async fn one_request(
    target: &Target,
    connection_string: &str,
    body: Bytes,
    tally: &Tally,
) -> anyhow::Result<()> {
    let (mut sender, _conn) = http1(target).await?;
    send_and_drain(
        &mut sender,
        sql_request(target, connection_string, body)?,
        tally,
    )
    .await
}

/// `/sql` requests back to back on one keep-alive connection, until it fails.
async fn keep_alive_requests(
    target: &Target,
    connection_string: &str,
    body: &Bytes,
    tally: &Tally,
) -> anyhow::Result<()> {
    let (mut sender, _conn) = http1(target).await?;
    loop {
        sender.ready().await.context("connection closed")?;
        let request = sql_request(target, connection_string, body.clone())?;
        send_and_drain(&mut sender, request, tally).await?;
    }
}

async fn send_and_drain(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
    tally: &Tally,
) -> anyhow::Result<()> {
    tally.add("requests sent", 1);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        bytes += frame?.data_ref().map_or(0, |data| data.len() as u64);
    }
    tally.add(format!("answered HTTP {}", status.as_u16()), 1);
    tally.add("answer bytes", bytes);
    Ok(())
}

/// `{"query":"SELECT 1","params":[0,0,…,0]}`, padded with spaces to exactly `bytes` bytes.
fn huge_json(bytes: usize) -> Bytes {
    const HEAD: &[u8] = br#"{"query":"SELECT 1","params":[0"#;
    const TAIL: &[u8] = b"]}";
    let mut body = Vec::with_capacity(bytes.max(HEAD.len() + TAIL.len()));
    body.extend_from_slice(HEAD);
    while body.len() + 2 + TAIL.len() <= bytes {
        body.extend_from_slice(b",0");
    }
    while body.len() + TAIL.len() < bytes {
        body.push(b' ');
    }
    body.extend_from_slice(TAIL);
    Bytes::from(body)
}

/// Waits until the gateway closes `tcp` or answers (an HTTP answer is tallied by its status),
/// counting it; the caller's stop ends the wait otherwise.
async fn until_closed(tcp: &mut TcpStream, tally: &Tally) {
    let mut buf = [0u8; 4096];
    match tcp.read(&mut buf).await {
        Ok(0) => tally.add("closed by the gateway", 1),
        Ok(n) => tally.add(answer(&buf[..n]), 1),
        Err(_) => tally.add("reset by the gateway", 1),
    }
}

/// How to tally the first bytes the gateway answered with: `HTTP/1.1 429 …` → "answered HTTP
/// 429".
fn answer(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64)]);
    match text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
    {
        Some(status) => format!("answered HTTP {status}"),
        None => "answered by the gateway".into(),
    }
}

/// One byte (a space: JSON allows leading whitespace) per second, until the gateway answers
/// or closes.
async fn trickle(tcp: TcpStream, tally: &Tally) {
    let (mut read, mut write) = tcp.into_split();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if write.write_all(b" ").await.is_err() {
                    return tally.add("cut off by the gateway while trickling", 1);
                }
                tally.add("bytes trickled", 1);
            }
            read = read.read(&mut buf) => {
                return match read {
                    Ok(0) => tally.add("closed by the gateway", 1),
                    Ok(n) => tally.add(answer(&buf[..n]), 1),
                    Err(_) => tally.add("reset by the gateway", 1),
                };
            }
        }
    }
}

// --- HTTP/2, by hand -------------------------------------------------------------------------

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_HEADERS: u8 = 0x1;
const H2_RST_STREAM: u8 = 0x3;
const H2_SETTINGS: u8 = 0x4;
const H2_PING: u8 = 0x6;
const H2_GOAWAY: u8 = 0x7;
const H2_ACK: u8 = 0x1;
const H2_END_HEADERS: u8 = 0x4;
/// Larger frames than this from the server end the connection (its default maximum is 16 KiB).
const H2_MAX_FRAME: usize = 1 << 20;

fn h2_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frames here are small");
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK integer with an `n`-bit prefix after `flags` (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, flags: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// An HPACK string literal, not Huffman-coded.
fn hpack_str(out: &mut Vec<u8>, s: &str) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// The header block of `POST /sql` promising a body (literals without indexing, so every
/// stream can carry the same block).
fn h2_post_sql(authority: &str, connection_string: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static table 3 and 6)
    hpack_int(&mut block, 0, 4, 4); // :path (static 4), literal value
    hpack_str(&mut block, "/sql");
    hpack_int(&mut block, 0, 4, 1); // :authority (static 1), literal value
    hpack_str(&mut block, authority);
    for (name, value) in [
        ("content-type", "application/json"),
        ("content-length", "1000000"),
        ("neon-connection-string", connection_string),
    ] {
        block.push(0);
        hpack_str(&mut block, name);
        hpack_str(&mut block, value);
    }
    block
}

/// Connects, sends the preface and an empty SETTINGS frame.
async fn h2_open(target: &Target) -> anyhow::Result<(OwnedReadHalf, OwnedWriteHalf)> {
    let tcp = target.connect().await?;
    let (read, mut write) = tcp.into_split();
    let mut hello = H2_PREFACE.to_vec();
    h2_frame(&mut hello, H2_SETTINGS, 0, 0, &[]);
    write
        .write_all(&hello)
        .await
        .context("sending the preface")?;
    Ok((read, write))
}

/// Reads the server's frames until it closes: acknowledges SETTINGS and answers PINGs (as a
/// client keeping an idle connection alive would), counts resets, answers and GOAWAY.
async fn h2_read_frames(
    mut read: OwnedReadHalf,
    write: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    tally: &Tally,
) {
    let mut header = [0u8; 9];
    let mut payload = Vec::new();
    let mut first = true;
    loop {
        if read.read_exact(&mut header).await.is_err() {
            return tally.add("closed by the gateway", 1);
        }
        // A gateway refusing the connection may answer in HTTP/1.1 instead of frames.
        if std::mem::take(&mut first) && header.starts_with(b"HTTP/") {
            let mut rest = [0u8; 64];
            let n = read.read(&mut rest).await.unwrap_or(0);
            let bytes = [&header[..], &rest[..n]].concat();
            return tally.add(answer(&bytes), 1);
        }
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let (kind, flags) = (header[3], header[4]);
        if len > H2_MAX_FRAME {
            return tally.error(format!("a {len}-byte frame from the gateway"));
        }
        payload.resize(len, 0);
        if read.read_exact(&mut payload).await.is_err() {
            return tally.add("closed by the gateway", 1);
        }
        let mut answer = Vec::new();
        match kind {
            H2_SETTINGS if flags & H2_ACK == 0 => {
                h2_frame(&mut answer, H2_SETTINGS, H2_ACK, 0, &[]);
            }
            H2_PING if flags & H2_ACK == 0 => {
                tally.add("PINGs answered", 1);
                h2_frame(&mut answer, H2_PING, H2_ACK, 0, &payload);
            }
            H2_RST_STREAM => tally.add("streams reset by the gateway", 1),
            H2_HEADERS => tally.add("streams answered by the gateway", 1),
            H2_GOAWAY => {
                return tally.add("GOAWAY from the gateway", 1);
            }
            _ => {}
        }
        if !answer.is_empty() && write.lock().await.write_all(&answer).await.is_err() {
            return tally.add("closed by the gateway", 1);
        }
    }
}

/// One HTTP/2 connection with `streams` streams opened at once, each a `POST /sql` whose
/// body never comes; then held, answering PINGs.
async fn h2_streams(
    target: &Target,
    connection_string: &str,
    streams: usize,
    tally: &Tally,
) -> anyhow::Result<()> {
    let (read, write) = h2_open(target).await?;
    let write = Arc::new(tokio::sync::Mutex::new(write));
    let block = h2_post_sql(&target.gateway.to_string(), connection_string);
    let writer = {
        let write = write.clone();
        async move {
            let mut batch = Vec::new();
            for chunk in (0..streams).collect::<Vec<_>>().chunks(256) {
                batch.clear();
                for &i in chunk {
                    let id = u32::try_from(2 * i + 1).map_err(|_| anyhow!("too many streams"))?;
                    h2_frame(&mut batch, H2_HEADERS, H2_END_HEADERS, id, &block);
                }
                write
                    .lock()
                    .await
                    .write_all(&batch)
                    .await
                    .context("opening streams")?;
                tally.add("streams opened", chunk.len() as u64);
            }
            anyhow::Ok(())
        }
    };
    let (opened, ()) = tokio::join!(writer, h2_read_frames(read, write.clone(), tally));
    opened
}

// --- WebSocket, by hand ------------------------------------------------------------------------

/// Upgrades, then sends the header of one masked binary frame of `bytes` bytes and all of its
/// payload but the last byte (zeros, from one small buffer), and holds the connection until
/// the gateway closes it; the caller's stop ends it otherwise.
async fn ws_oversize(target: &Target, bytes: usize, tally: &Tally) -> anyhow::Result<()> {
    let mut tcp = target.connect().await?;
    let upgrade = format!(
        "GET /v2?address=db.localtest.me:5432 HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        target.gateway
    );
    tcp.write_all(upgrade.as_bytes()).await?;
    let head = timeout(CONNECT_TIMEOUT, read_head(&mut tcp))
        .await
        .map_err(|_| anyhow!("no answer to the upgrade"))??;
    if !head.starts_with("HTTP/1.1 101") {
        bail!(
            "upgrade refused: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    tally.add("upgrades", 1);
    // FIN + binary, masked, 64-bit length; a zero mask leaves the payload as it is.
    let mut frame = vec![0x82, 0xff];
    frame.extend_from_slice(&(bytes as u64).to_be_bytes());
    frame.extend_from_slice(&[0; 4]);
    tcp.write_all(&frame).await?;
    let zeros = vec![0u8; 64 * 1024];
    let mut left = bytes.saturating_sub(1);
    while left > 0 {
        let n = left.min(zeros.len());
        if tcp.write_all(&zeros[..n]).await.is_err() {
            tally.add("cut off by the gateway while sending", 1);
            return Ok(());
        }
        left -= n;
    }
    tally.add("messages sent but their last byte", 1);
    until_closed(&mut tcp, tally).await;
    Ok(())
}

/// An HTTP response head (up to the blank line, at most 8 KiB).
async fn read_head(tcp: &mut TcpStream) -> anyhow::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || tcp.read(&mut byte).await? == 0 {
            bail!("no complete answer to the upgrade");
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[cfg(test)]
mod tests {
    use super::{answer, h2_post_sql, hpack_int, huge_json};

    #[test]
    fn answers_are_tallied_by_status() {
        assert_eq!(
            answer(b"HTTP/1.1 429 Too Many Requests\r\n"),
            "answered HTTP 429"
        );
        assert_eq!(answer(b"HTTP/1.1 4"), "answered by the gateway");
        assert_eq!(answer(b"\0\0\0\x04"), "answered by the gateway");
    }

    #[test]
    fn huge_json_is_valid_and_exactly_sized() {
        for bytes in [40, 41, 1000, 1001] {
            let body = huge_json(bytes);
            assert_eq!(body.len(), bytes);
            let value: serde_json::Value = serde_json::from_slice(&body).expect("the body is JSON");
            assert_eq!(value["query"], "SELECT 1");
            assert!(value["params"].as_array().is_some_and(|p| !p.is_empty()));
        }
    }

    #[test]
    fn hpack_integers() {
        let check = |n: u32, value: usize, expected: &[u8]| {
            let mut out = Vec::new();
            hpack_int(&mut out, 0, n, value);
            assert_eq!(out, expected, "{value} with a {n}-bit prefix");
        };
        // RFC 7541 C.1.1 to C.1.3.
        check(5, 10, &[10]);
        check(5, 1337, &[31, 154, 10]);
        check(8, 42, &[42]);
        check(7, 126, &[126]);
        check(7, 127, &[127, 0]);
    }

    #[test]
    fn post_sql_block_starts_with_the_pseudo_headers() {
        let block = h2_post_sql("127.0.0.1:1", "postgres://u:p@db.localtest.me:1/main");
        assert_eq!(&block[..4], &[0x83, 0x86, 0x04, 4]);
        assert_eq!(&block[4..8], b"/sql");
    }
}
