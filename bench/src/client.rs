//! The clients the scenarios drive: a Postgres session (tokio-postgres straight to Postgres or
//! PgBouncer, over plain TCP through the gateway, or over the gateway's WebSocket tunnel) and
//! an HTTP/1.1 keep-alive connection sending `POST /sql`. Every connect and every query is
//! bounded by a timeout, and every answer is checked (status, row count), so a failure is
//! counted, never mistaken for a fast query.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use gateway::WsStream;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::IgnoredAny;
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_postgres::NoTls;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Role, password and database every scenario uses (the default endpoint's, see bench.sh).
pub const USER: &str = "postgres";
pub const PASSWORD: &str = "postgres";
pub const DATABASE: &str = "main";

/// One statement and what its answer must look like.
pub struct Statement {
    pub label: &'static str,
    pub sql: &'static str,
    pub rows: usize,
    /// The `POST /sql` body, built once.
    http_body: Bytes,
}

impl Statement {
    pub fn new(label: &'static str, sql: &'static str, rows: usize) -> Statement {
        let body = serde_json::json!({ "query": sql, "params": [] }).to_string();
        Statement {
            label,
            sql,
            rows,
            http_body: Bytes::from(body),
        }
    }
}

/// Where a session goes.
#[derive(Clone, Debug)]
pub enum Dial {
    /// tokio-postgres over TCP to `host:port` (Postgres, PgBouncer, or the gateway's port).
    Tcp { host: String, port: u16 },
    /// tokio-postgres over a WebSocket to the gateway; `address` is the `?address=` host;
    /// `from`, the source address to connect from (the kernel's choice when `None`).
    Ws {
        gateway: SocketAddr,
        address: String,
        from: Option<IpAddr>,
    },
    /// `POST /sql` to the gateway on one keep-alive connection.
    Http(Arc<HttpTarget>),
}

/// What every `POST /sql` of one run carries.
#[derive(Debug)]
pub struct HttpTarget {
    gateway: SocketAddr,
    host: HeaderValue,
    connection_string: HeaderValue,
    /// `Bearer <token>` for a JWT login.
    authorization: Option<HeaderValue>,
}

impl HttpTarget {
    /// `endpoint_host` names the endpoint (`db.localtest.me`).
    pub fn new(gateway: SocketAddr, endpoint_host: &str) -> anyhow::Result<HttpTarget> {
        let url = format!(
            "postgres://{USER}:{PASSWORD}@{endpoint_host}:{}/{DATABASE}",
            gateway.port()
        );
        Ok(HttpTarget {
            gateway,
            host: HeaderValue::from_str(&gateway.to_string())?,
            connection_string: HeaderValue::from_str(&url)?,
            authorization: None,
        })
    }

    /// A JWT login as `role` (no password in the connection string), as
    /// `neon(url, { authToken })` sends it.
    pub fn with_token(
        gateway: SocketAddr,
        endpoint_host: &str,
        role: &str,
        token: &str,
    ) -> anyhow::Result<HttpTarget> {
        let url = format!(
            "postgres://{role}@{endpoint_host}:{}/{DATABASE}",
            gateway.port()
        );
        Ok(HttpTarget {
            gateway,
            host: HeaderValue::from_str(&gateway.to_string())?,
            connection_string: HeaderValue::from_str(&url)?,
            authorization: Some(HeaderValue::from_str(&format!("Bearer {token}"))?),
        })
    }
}

/// Bounds on network waits.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub query: Duration,
}

/// An open session or HTTP connection.
pub enum Session {
    Pg {
        client: tokio_postgres::Client,
        conn: JoinHandle<()>,
    },
    Http {
        sender: SendRequest<Full<Bytes>>,
        target: Arc<HttpTarget>,
        conn: JoinHandle<()>,
    },
}

impl Dial {
    /// Opens a session (for Postgres: through authentication), within `timeouts.connect`.
    pub async fn connect(&self, timeouts: Timeouts) -> anyhow::Result<Session> {
        timeout(timeouts.connect, self.connect_unbounded(timeouts.connect))
            .await
            .map_err(|_| anyhow!("connect timed out after {:?}", timeouts.connect))?
    }

    async fn connect_unbounded(&self, limit: Duration) -> anyhow::Result<Session> {
        match self {
            Dial::Tcp { host, port } => {
                let (client, conn) = pg_config(limit)
                    .host(host)
                    .port(*port)
                    .connect(NoTls)
                    .await
                    .context("Postgres connect")?;
                Ok(Session::Pg {
                    client,
                    conn: tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                })
            }
            Dial::Ws {
                gateway,
                address,
                from,
            } => {
                let tcp = connect_tcp(*gateway, *from)
                    .await
                    .context("TCP connect to the gateway")?;
                let url = format!(
                    "ws://{gateway}/v2?address={address}:5432",
                    gateway = gateway
                );
                let (ws, _) =
                    tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config()))
                        .await
                        .context("WebSocket handshake")?;
                let (client, conn) = pg_config(limit)
                    .connect_raw(WsStream::new(ws), NoTls)
                    .await
                    .context("Postgres startup over the WebSocket")?;
                Ok(Session::Pg {
                    client,
                    conn: tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                })
            }
            Dial::Http(target) => {
                let tcp = connect_tcp(target.gateway, None)
                    .await
                    .context("TCP connect to the gateway")?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .context("HTTP/1.1 handshake")?;
                Ok(Session::Http {
                    sender,
                    target: target.clone(),
                    conn: tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                })
            }
        }
    }
}

/// A TCP connection to `to` (with `TCP_NODELAY`), from the source address `from` when given:
/// all of 127.0.0.0/8 is loopback on Linux, so a client on 127.0.0.2 reaches a gateway on
/// 127.0.0.1 and looks like another host to it.
pub async fn connect_tcp(to: SocketAddr, from: Option<IpAddr>) -> io::Result<TcpStream> {
    let tcp = match from {
        None => TcpStream::connect(to).await?,
        Some(ip) => {
            let socket = match ip {
                IpAddr::V4(_) => TcpSocket::new_v4()?,
                IpAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(to).await?
        }
    };
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Like the gateway's side: a 16 KiB read buffer, and every frame written at once.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
}

fn pg_config(connect_timeout: Duration) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .user(USER)
        .password(PASSWORD)
        .dbname(DATABASE)
        .connect_timeout(connect_timeout);
    config
}

/// The part of a `/sql` answer the loadgen checks.
#[derive(Deserialize)]
struct SqlAnswer {
    rows: Vec<IgnoredAny>,
}

impl Session {
    /// Runs `statement` once, within `limit`, and checks the number of rows.
    pub async fn query(&mut self, statement: &Statement, limit: Duration) -> anyhow::Result<()> {
        timeout(limit, self.query_unbounded(statement))
            .await
            .map_err(|_| anyhow!("query timed out after {limit:?}"))?
    }

    async fn query_unbounded(&mut self, statement: &Statement) -> anyhow::Result<()> {
        let rows = match self {
            // Parse, Bind, Describe, Execute, Sync in one round trip with the unnamed statement,
            // as the gateway does for `/sql`; works through PgBouncer's transaction pooling.
            Session::Pg { client, .. } => client.query_typed(statement.sql, &[]).await?.len(),
            Session::Http { sender, target, .. } => {
                sender.ready().await.context("HTTP connection closed")?;
                let mut request = Request::post("/sql")
                    .header(HOST, target.host.clone())
                    .header("neon-connection-string", target.connection_string.clone())
                    .header("neon-raw-text-output", "true")
                    .header("neon-array-mode", "true")
                    .header(CONTENT_TYPE, "application/json");
                if let Some(authorization) = &target.authorization {
                    request = request.header(AUTHORIZATION, authorization.clone());
                }
                let request = request.body(Full::new(statement.http_body.clone()))?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                if !status.is_success() {
                    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                    bail!("HTTP {status}: {text}");
                }
                serde_json::from_slice::<SqlAnswer>(&body)
                    .context("parsing the /sql answer")?
                    .rows
                    .len()
            }
        };
        if rows != statement.rows {
            bail!("expected {} rows, got {rows}", statement.rows);
        }
        Ok(())
    }

    /// Closes the session and waits (within `limit`) until its connection has ended, so the
    /// server side is gone before the next step opens new ones.
    pub async fn close(self, limit: Duration) {
        let conn = match self {
            Session::Pg { client, conn } => {
                drop(client); // sends Terminate; the connection task then ends
                conn
            }
            Session::Http { sender, conn, .. } => {
                drop(sender); // hyper closes an idle connection once its sender is gone
                conn
            }
        };
        let abort = conn.abort_handle();
        if timeout(limit, conn).await.is_err() {
            abort.abort();
        }
    }
}
