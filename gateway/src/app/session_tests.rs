//! The session handshake without Postgres: the test plays the client on one end of an
//! in-memory stream given to [`serve_stream`], and [`FakeBackend`], a few lines of scripted
//! Postgres on a loopback port, plays the backend. Each case checks what the client heard
//! (challenges, AuthenticationOk … ReadyForQuery, or the exact FATAL) and what the backend saw.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use gateway_testkit::FakeControlPlane;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_protocol::password::scram_sha_256;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::app::config::Config;
use crate::frontend::session::{serve_stream, Transport};
use crate::frontend::state::AppState;
use crate::pgwire::scram::{ScramSecret, ScramServer};
use crate::pgwire::{frame, startup};

const USER: &str = "alice";
const PASSWORD: &str = "correct horse";
/// What the fake backend reports as its version, to see its ParameterStatus relayed.
const SERVER_VERSION: &str = "16.0 (fake)";
/// The fake backend's BackendKeyData: the client must get the gateway's own instead.
const BACKEND_KEY: (i32, i32) = (4242, 17);
/// The salt of the fake backend's MD5 request, which the gateway relays as it is.
const MD5_SALT: [u8; 4] = [7, 1, 2, 3];
/// Far longer than any case takes: only a hung gateway hits it.
const PATIENCE: Duration = Duration::from_secs(60);

/// How the fake backend asks for the password.
#[derive(Clone, Copy, Debug)]
enum Ask {
    Cleartext,
    Md5,
    Scram,
}

/// One connection the fake backend accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    user: String,
    logged_in: bool,
}

/// A stand-in for Postgres on `127.0.0.1:0`, one role (`alice`, [`PASSWORD`], whose SCRAM
/// verifier is `secret`). Each connection: the StartupMessage; the password as `ask` says
/// (SCRAM checked with the gateway's own [`ScramServer`] against `secret`); FATAL `28P01` as
/// Postgres words it, or AuthenticationOk, one ParameterStatus, BackendKeyData and
/// ReadyForQuery; then every Query gets EmptyQueryResponse and ReadyForQuery until Terminate
/// or EOF.
struct FakeBackend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl FakeBackend {
    async fn start(ask: Ask, secret: &str) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake backend");
        let addr = listener.local_addr().expect("local address");
        let secret = Arc::new(ScramSecret::parse(secret).expect("a SCRAM secret"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (secret, seen) = (secret.clone(), seen.clone());
                    tokio::spawn(async move {
                        // A gateway that hangs up mid-way is the gateway's business.
                        let _ = FakeBackend::session(stream, ask, secret, seen).await;
                    });
                }
            }
        });
        FakeBackend { addr, seen, task }
    }

    fn address(&self) -> String {
        self.addr.to_string()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("the fake's lock").clone()
    }

    async fn session(
        mut stream: TcpStream,
        ask: Ask,
        secret: Arc<ScramSecret>,
        seen: Arc<Mutex<Vec<Seen>>>,
    ) -> std::io::Result<()> {
        let length = stream.read_u32().await? as usize;
        let mut packet = (length as u32).to_be_bytes().to_vec();
        packet.resize(length, 0);
        stream.read_exact(&mut packet[4..]).await?;
        let Ok(startup::StartupPacket::Startup(startup)) = startup::parse_startup(&packet) else {
            panic!("the gateway sent no StartupMessage");
        };
        let user = startup.get("user").unwrap_or_default().to_owned();
        let index = {
            let mut seen = seen.lock().expect("the fake's lock");
            seen.push(Seen {
                user: user.clone(),
                logged_in: false,
            });
            seen.len() - 1
        };
        let mut out = BytesMut::new();
        let accepted = match ask {
            Ask::Cleartext => {
                startup::authentication_cleartext_password(&mut out);
                let body = Self::exchange(&mut stream, &mut out).await?;
                startup::password(&body) == Some(PASSWORD.as_bytes())
            }
            Ask::Md5 => {
                let salt = MD5_SALT;
                frame::put_message(&mut out, b'R', |b| {
                    b.extend_from_slice(&5i32.to_be_bytes());
                    b.extend_from_slice(&salt);
                });
                let body = Self::exchange(&mut stream, &mut out).await?;
                let expected = md5_hash(USER.as_bytes(), PASSWORD.as_bytes(), salt);
                startup::password(&body) == Some(expected.as_bytes())
            }
            Ask::Scram => {
                startup::authentication_sasl(&mut out, &["SCRAM-SHA-256"]);
                let body = Self::exchange(&mut stream, &mut out).await?;
                let (_, client_first) =
                    startup::sasl_initial_response(&body).expect("a SASLInitialResponse");
                let server = ScramServer::start(secret, client_first, "ZmFrZWJhY2tlbmQ")
                    .expect("a valid client-first-message");
                startup::authentication_sasl_continue(&mut out, server.server_first().as_bytes());
                let client_final = Self::exchange(&mut stream, &mut out).await?;
                match server.finish(&client_final).expect("a valid client-final") {
                    Some(proven) => {
                        startup::authentication_sasl_final(
                            &mut out,
                            proven.server_final.as_bytes(),
                        );
                        true
                    }
                    None => false,
                }
            }
        };
        if !accepted || user != USER {
            let message = format!("password authentication failed for user \"{user}\"");
            startup::fatal(&mut out, "28P01", &message, None);
            return stream.write_all(&out).await;
        }
        seen.lock().expect("the fake's lock")[index].logged_in = true;
        startup::authentication_ok(&mut out);
        startup::parameter_status(&mut out, "server_version", SERVER_VERSION);
        startup::backend_key_data(&mut out, BACKEND_KEY.0, BACKEND_KEY.1);
        startup::ready_for_query(&mut out, b'I');
        stream.write_all(&out).await?;
        loop {
            let (tag, _) = Self::read_message(&mut stream).await?;
            match tag {
                b'Q' => {
                    let mut out = BytesMut::new();
                    frame::put_message(&mut out, b'I', |_| {});
                    startup::ready_for_query(&mut out, b'I');
                    stream.write_all(&out).await?;
                }
                b'X' => return Ok(()),
                other => panic!("unexpected message {} after login", char::from(other)),
            }
        }
    }

    /// Sends what `out` holds and reads the PasswordMessage that answers it.
    async fn exchange(stream: &mut TcpStream, out: &mut BytesMut) -> std::io::Result<Vec<u8>> {
        stream.write_all(&out.split()).await?;
        let (tag, body) = Self::read_message(stream).await?;
        assert_eq!(
            tag, b'p',
            "the gateway answers a challenge with a PasswordMessage"
        );
        Ok(body)
    }

    async fn read_message(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
        let tag = stream.read_u8().await?;
        let length = stream.read_u32().await? as usize;
        let mut body = vec![0; length - 4];
        stream.read_exact(&mut body).await?;
        Ok((tag, body))
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the client heard, one message at a time (challenge payloads left out: the client
/// answers them, and checks the server's SCRAM signature, as it goes).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Heard {
    Cleartext,
    Md5,
    Sasl(Vec<String>),
    SaslContinue,
    SaslFinal,
    AuthOk,
    Parameter(String, String),
    /// BackendKeyData; whether it is the backend's own (it must not be).
    KeyData {
        backend_own: bool,
    },
    Ready(u8),
    EmptyQuery,
    Fatal {
        code: String,
        message: String,
    },
    Closed,
}

fn fatal(code: &str, message: &str) -> Heard {
    Heard::Fatal {
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

/// What a client hears when its login succeeds, after its challenges.
fn logged_in() -> Vec<Heard> {
    vec![
        Heard::AuthOk,
        Heard::Parameter("server_version".into(), SERVER_VERSION.into()),
        Heard::KeyData { backend_own: false },
        Heard::Ready(b'I'),
    ]
}

fn auth_failed(user: &str) -> Heard {
    fatal(
        "28P01",
        &format!("password authentication failed for user '{user}'"),
    )
}

/// The client's end of a session.
struct Client {
    io: DuplexStream,
    buf: BytesMut,
    /// The SCRAM exchange in progress, and the payload of the last SASL message heard.
    scram: Option<ScramSha256>,
    sasl_data: Vec<u8>,
}

impl Client {
    async fn send(&mut self, write: impl FnOnce(&mut BytesMut)) {
        let mut out = BytesMut::new();
        write(&mut out);
        self.io.write_all(&out).await.expect("the gateway reads");
    }

    async fn startup(&mut self, params: &[(&str, &str)]) {
        self.send(|b| frontend::startup_message(params.iter().copied(), b).expect("startup"))
            .await;
    }

    async fn recv(&mut self) -> Heard {
        loop {
            if let Some(message) = Message::parse(&mut self.buf).expect("a backend message") {
                return self.heard(message);
            }
            let read = tokio::time::timeout(PATIENCE, self.io.read_buf(&mut self.buf))
                .await
                .expect("the gateway answers in time");
            if read.expect("the stream reads") == 0 {
                assert!(self.buf.is_empty(), "the gateway closed mid-message");
                return Heard::Closed;
            }
        }
    }

    fn heard(&mut self, message: Message) -> Heard {
        match message {
            Message::AuthenticationCleartextPassword => Heard::Cleartext,
            Message::AuthenticationMd5Password(_) => Heard::Md5,
            Message::AuthenticationSasl(body) => Heard::Sasl(
                body.mechanisms()
                    .map(|m| Ok(m.to_owned()))
                    .collect()
                    .expect("mechanisms"),
            ),
            Message::AuthenticationSaslContinue(body) => {
                self.sasl_data = body.data().to_vec();
                Heard::SaslContinue
            }
            Message::AuthenticationSaslFinal(body) => {
                self.sasl_data = body.data().to_vec();
                Heard::SaslFinal
            }
            Message::AuthenticationOk => Heard::AuthOk,
            Message::ParameterStatus(body) => Heard::Parameter(
                body.name().expect("name").to_owned(),
                body.value().expect("value").to_owned(),
            ),
            Message::BackendKeyData(body) => Heard::KeyData {
                backend_own: (body.process_id(), body.secret_key()) == BACKEND_KEY,
            },
            Message::ReadyForQuery(body) => Heard::Ready(body.status()),
            Message::EmptyQueryResponse => Heard::EmptyQuery,
            Message::ErrorResponse(body) => {
                let mut fields = body.fields();
                let (mut severity, mut code, mut text) = (None, None, None);
                while let Some(field) = fields.next().expect("error fields") {
                    let value = Some(String::from_utf8_lossy(field.value_bytes()).into_owned());
                    match field.type_() {
                        b'V' => severity = value,
                        b'C' => code = value,
                        b'M' => text = value,
                        _ => {}
                    }
                }
                assert_eq!(severity.as_deref(), Some("FATAL"));
                Heard::Fatal {
                    code: code.expect("a SQLSTATE"),
                    message: text.expect("a message"),
                }
            }
            _ => panic!("unexpected message during the handshake"),
        }
    }

    /// Answers every challenge with `password` until ReadyForQuery, a FATAL or EOF; what was
    /// heard, in order.
    async fn login(&mut self, password: &str) -> Vec<Heard> {
        let mut heard = Vec::new();
        loop {
            let message = self.recv().await;
            heard.push(message.clone());
            match message {
                Heard::Cleartext => {
                    self.send(|b| frontend::password_message(password.as_bytes(), b).expect("pw"))
                        .await
                }
                Heard::Md5 => {
                    let hash = md5_hash(USER.as_bytes(), password.as_bytes(), MD5_SALT);
                    self.send(|b| frontend::password_message(hash.as_bytes(), b).expect("md5"))
                        .await
                }
                Heard::Sasl(_) => {
                    let scram =
                        ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                    let first = scram.message().to_vec();
                    self.scram = Some(scram);
                    self.send(|b| {
                        frontend::sasl_initial_response("SCRAM-SHA-256", &first, b).expect("sasl")
                    })
                    .await
                }
                Heard::SaslContinue => {
                    let scram = self.scram.as_mut().expect("SASL started");
                    scram
                        .update(&self.sasl_data)
                        .expect("a server-first-message");
                    let reply = scram.message().to_vec();
                    self.send(|b| frontend::sasl_response(&reply, b).expect("sasl"))
                        .await
                }
                Heard::SaslFinal => {
                    let scram = self.scram.as_mut().expect("SASL started");
                    scram
                        .finish(&self.sasl_data)
                        .expect("the server's signature verifies");
                }
                Heard::Ready(_) | Heard::Fatal { .. } | Heard::Closed => return heard,
                _ => {}
            }
        }
    }
}

/// A session served on an in-memory stream, with the test as its client.
struct Session {
    client: Client,
    served: JoinHandle<()>,
}

impl Session {
    fn start(transport: Transport, state: &Arc<AppState>) -> Session {
        let (client, gateway) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(serve_stream(
            gateway,
            &[],
            transport,
            [127, 0, 0, 1].into(),
            state.clone(),
        ));
        Session {
            client: Client {
                io: client,
                buf: BytesMut::new(),
                scram: None,
                sasl_data: Vec::new(),
            },
            served,
        }
    }

    /// The session ends by itself once the client hangs up.
    async fn end(self) {
        drop(self.client);
        tokio::time::timeout(PATIENCE, self.served)
            .await
            .expect("the session ends when the client hangs up")
            .expect("the session task does not panic");
    }
}

/// Where the endpoint `db` and the role's password check come from.
#[derive(Clone, Copy, Debug)]
enum Routing {
    /// `db=<fake backend>` in the configuration: Postgres judges the password.
    Static,
    /// The fake control plane wakes `db` at the fake backend and has alice's SCRAM secret;
    /// any other endpoint or role it does not know.
    ControlPlane,
}

fn tcp(_: &AppState) -> Transport {
    Transport::Tcp
}

fn websocket(state: &AppState) -> Transport {
    Transport::WebSocket {
        tls: false,
        address: None,
        host: None,
        sni: None,
        handshake: state.handshake_pool.budget(),
    }
}

struct LoginCase {
    name: &'static str,
    routing: Routing,
    transport: fn(&AppState) -> Transport,
    require_tls: bool,
    /// How the fake backend asks for the password.
    ask: Ask,
    startup: &'static [(&'static str, &'static str)],
    /// What the client answers every challenge with.
    password: &'static str,
    /// What the client hears, up to ReadyForQuery or the FATAL.
    heard: Vec<Heard>,
    /// What the fake backend saw: (user, logged in) per connection.
    backend: Vec<(&'static str, bool)>,
}

/// Runs one login against a fresh gateway state and fake backend; after a successful one, a
/// query goes through the relay both ways.
async fn check(case: LoginCase) {
    let name = case.name;
    let secret = scram_sha_256(PASSWORD.as_bytes());
    let backend = FakeBackend::start(case.ask, &secret).await;
    let control_plane = FakeControlPlane::start().await;
    let mut config = match case.routing {
        Routing::Static => {
            let route = format!("db={}", backend.address());
            Config::for_tests(vec![route.parse().expect("a route")])
        }
        Routing::ControlPlane => {
            control_plane.route("db", &backend.address());
            control_plane.secret("db", USER, &secret);
            Config::for_tests_with_control_plane(&control_plane.url(), None)
        }
    };
    config.clients.require_tls = case.require_tls;
    let state = crate::app::state(&config).expect("the gateway's state");
    let mut session = Session::start((case.transport)(&state), &state);

    session.client.startup(case.startup).await;
    let heard = session.client.login(case.password).await;
    assert_eq!(heard, case.heard, "{name}: what the client heard");
    let ready = heard.last() == Some(&Heard::Ready(b'I'));
    if ready {
        session
            .client
            .send(|b| frontend::query("", b).expect("a query"))
            .await;
        let answer = [session.client.recv().await, session.client.recv().await];
        assert_eq!(answer, [Heard::EmptyQuery, Heard::Ready(b'I')], "{name}");
        session.client.send(frontend::terminate).await;
    } else {
        assert_eq!(session.client.recv().await, Heard::Closed, "{name}");
    }
    session.end().await;

    let expected: Vec<Seen> = case
        .backend
        .iter()
        .map(|&(user, logged_in)| Seen {
            user: user.to_owned(),
            logged_in,
        })
        .collect();
    assert_eq!(backend.seen(), expected, "{name}: what the backend saw");
    // Metering: the session, its backend connection and its query; nothing at all for a
    // client that never got a session.
    let usage = state.usage.snapshot();
    if ready {
        let db = usage.get("db").expect("db's usage");
        assert_eq!(
            (db.sessions, db.connections, db.queries),
            (1, 1, 1),
            "{name}: usage"
        );
        assert!(
            db.ingress_bytes > 0 && db.egress_bytes > 0,
            "{name}: {db:?}"
        );
    } else {
        assert!(usage.is_empty(), "{name}: usage {usage:?}");
    }
    if let Routing::ControlPlane = case.routing {
        // Nothing is woken for a client that did not prove its password.
        let wakes = usize::from(!expected.is_empty());
        assert_eq!(control_plane.wakes(), wakes, "{name}: wakes");
    }
}

const ALICE: &[(&str, &str)] = &[("user", USER), ("database", "app")];

fn scram_challenge() -> Vec<Heard> {
    vec![
        Heard::Sasl(vec!["SCRAM-SHA-256".into()]),
        Heard::SaslContinue,
    ]
}

/// `first`, then `rest`.
fn then(first: Vec<Heard>, rest: Vec<Heard>) -> Vec<Heard> {
    first.into_iter().chain(rest).collect()
}

#[tokio::test]
async fn static_routes() {
    let cases = [
        LoginCase {
            name: "WebSocket: the cleartext password answers the backend's cleartext request",
            routing: Routing::Static,
            transport: websocket,
            require_tls: false,
            ask: Ask::Cleartext,
            startup: ALICE,
            password: PASSWORD,
            heard: then(vec![Heard::Cleartext], logged_in()),
            backend: vec![(USER, true)],
        },
        LoginCase {
            name: "WebSocket: the cleartext password answers the backend's SCRAM",
            routing: Routing::Static,
            transport: websocket,
            require_tls: false,
            ask: Ask::Scram,
            startup: ALICE,
            password: PASSWORD,
            heard: then(vec![Heard::Cleartext], logged_in()),
            backend: vec![(USER, true)],
        },
        LoginCase {
            name: "WebSocket: a wrong password, refused by the backend",
            routing: Routing::Static,
            transport: websocket,
            require_tls: false,
            ask: Ask::Cleartext,
            startup: ALICE,
            password: "wrong",
            heard: vec![Heard::Cleartext, auth_failed(USER)],
            backend: vec![(USER, false)],
        },
        LoginCase {
            name: "TCP: the backend's MD5 request is relayed",
            routing: Routing::Static,
            transport: tcp,
            require_tls: false,
            ask: Ask::Md5,
            startup: ALICE,
            password: PASSWORD,
            heard: then(vec![Heard::Md5], logged_in()),
            backend: vec![(USER, true)],
        },
        LoginCase {
            name: "TCP: the backend's SCRAM exchange is relayed, its signature too",
            routing: Routing::Static,
            transport: tcp,
            require_tls: false,
            ask: Ask::Scram,
            startup: ALICE,
            password: PASSWORD,
            heard: then(scram_challenge(), then(vec![Heard::SaslFinal], logged_in())),
            backend: vec![(USER, true)],
        },
        LoginCase {
            name: "TCP: a wrong MD5 password",
            routing: Routing::Static,
            transport: tcp,
            require_tls: false,
            ask: Ask::Md5,
            startup: ALICE,
            password: "wrong",
            heard: vec![Heard::Md5, auth_failed(USER)],
            backend: vec![(USER, false)],
        },
        LoginCase {
            name: "TCP: a wrong SCRAM password",
            routing: Routing::Static,
            transport: tcp,
            require_tls: false,
            ask: Ask::Scram,
            startup: ALICE,
            password: "wrong",
            heard: then(scram_challenge(), vec![auth_failed(USER)]),
            backend: vec![(USER, false)],
        },
        LoginCase {
            name: "no user name",
            routing: Routing::Static,
            transport: tcp,
            require_tls: false,
            ask: Ask::Scram,
            startup: &[("database", "app")],
            password: PASSWORD,
            heard: vec![fatal(
                "28000",
                "no PostgreSQL user name specified in startup packet",
            )],
            backend: vec![],
        },
        LoginCase {
            name: "TLS required, plain TCP",
            routing: Routing::Static,
            transport: tcp,
            require_tls: true,
            ask: Ask::Scram,
            startup: ALICE,
            password: PASSWORD,
            heard: vec![fatal(
                "28000",
                "this gateway requires TLS: connect with sslmode=require (or wss://)",
            )],
            backend: vec![],
        },
    ];
    for case in cases {
        check(case).await;
    }
}

/// The gateway runs SCRAM with the client itself and logs in to the backend with the keys
/// the proof gave. A wrong password, an unknown endpoint and an unknown role read the same,
/// and none of them wakes or contacts anything.
#[tokio::test]
async fn control_plane_routes() {
    let cases = [
        LoginCase {
            name: "TCP: the gateway's SCRAM, then the backend's with the proven keys",
            routing: Routing::ControlPlane,
            transport: tcp,
            require_tls: false,
            ask: Ask::Scram,
            startup: ALICE,
            password: PASSWORD,
            heard: then(scram_challenge(), then(vec![Heard::SaslFinal], logged_in())),
            backend: vec![(USER, true)],
        },
        LoginCase {
            name: "TCP: a wrong password",
            routing: Routing::ControlPlane,
            transport: tcp,
            require_tls: false,
            ask: Ask::Scram,
            startup: ALICE,
            password: "wrong",
            heard: then(scram_challenge(), vec![auth_failed(USER)]),
            backend: vec![],
        },
        LoginCase {
            name: "TCP: an unknown endpoint reads as a wrong password",
            routing: Routing::ControlPlane,
            transport: tcp,
            require_tls: false,
            ask: Ask::Scram,
            startup: &[("user", USER), ("options", "endpoint=ghost")],
            password: PASSWORD,
            heard: then(scram_challenge(), vec![auth_failed(USER)]),
            backend: vec![],
        },
        LoginCase {
            name: "TCP: an unknown role reads as a wrong password",
            routing: Routing::ControlPlane,
            transport: tcp,
            require_tls: false,
            ask: Ask::Scram,
            startup: &[("user", "mallory")],
            password: PASSWORD,
            heard: then(scram_challenge(), vec![auth_failed("mallory")]),
            backend: vec![],
        },
        LoginCase {
            name: "WebSocket: the cleartext password checked against the secret",
            routing: Routing::ControlPlane,
            transport: websocket,
            require_tls: false,
            ask: Ask::Scram,
            startup: ALICE,
            password: PASSWORD,
            heard: then(vec![Heard::Cleartext], logged_in()),
            backend: vec![(USER, true)],
        },
        LoginCase {
            name: "WebSocket: a wrong password",
            routing: Routing::ControlPlane,
            transport: websocket,
            require_tls: false,
            ask: Ask::Scram,
            startup: ALICE,
            password: "wrong",
            heard: vec![Heard::Cleartext, auth_failed(USER)],
            backend: vec![],
        },
    ];
    for case in cases {
        check(case).await;
    }
}

/// Sessions to an endpoint and to its `-pooler` are metered as one endpoint: each session,
/// its backend connection and its queries.
#[tokio::test]
async fn sessions_through_the_pooler_are_metered_for_the_endpoint() {
    let secret = scram_sha_256(PASSWORD.as_bytes());
    let backend = FakeBackend::start(Ask::Scram, &secret).await;
    let control_plane = FakeControlPlane::start().await;
    control_plane.route("db", &backend.address());
    control_plane.route("db-pooler", &backend.address());
    control_plane.secret("db", USER, &secret);
    let config = Config::for_tests_with_control_plane(&control_plane.url(), None);
    let state = crate::app::state(&config).expect("the gateway's state");
    type MakeTransport = fn(&AppState) -> Transport;
    let sessions: [(&str, MakeTransport, usize); 3] = [
        ("endpoint=db", websocket, 2),
        ("endpoint=db-pooler", websocket, 3),
        ("endpoint=db-pooler", tcp, 1),
    ];
    for (options, transport, queries) in sessions {
        let mut session = Session::start(transport(&state), &state);
        let startup = [("user", USER), ("database", "app"), ("options", options)];
        session.client.startup(&startup).await;
        let heard = session.client.login(PASSWORD).await;
        assert_eq!(heard.last(), Some(&Heard::Ready(b'I')), "{options}");
        for _ in 0..queries {
            session
                .client
                .send(|b| frontend::query("", b).expect("a query"))
                .await;
            let answer = [session.client.recv().await, session.client.recv().await];
            assert_eq!(answer, [Heard::EmptyQuery, Heard::Ready(b'I')]);
        }
        session.client.send(frontend::terminate).await;
        session.end().await;
    }
    let usage = state.usage.snapshot();
    assert_eq!(usage.keys().collect::<Vec<_>>(), ["db"]);
    let db = &usage["db"];
    assert_eq!((db.sessions, db.connections, db.queries), (3, 3, 6));
}

/// A client that stops talking is told `08006` once the handshake timeout has passed, on
/// paused time.
#[tokio::test(start_paused = true)]
async fn silent_clients_time_out() {
    struct Case {
        name: &'static str,
        transport: fn(&AppState) -> Transport,
        /// The startup packet sent before going silent, if any.
        startup: Option<&'static [(&'static str, &'static str)]>,
        heard: Vec<Heard>,
    }
    let timed_out = || fatal("08006", "canceling authentication due to timeout");
    let cases = [
        Case {
            name: "no startup packet",
            transport: tcp,
            startup: None,
            heard: vec![timed_out(), Heard::Closed],
        },
        Case {
            name: "no password",
            transport: websocket,
            startup: Some(ALICE),
            heard: vec![Heard::Cleartext, timed_out(), Heard::Closed],
        },
    ];
    let timeout = Duration::from_secs(5);
    let mut config = Config::for_tests(vec![]);
    config.sessions.handshake_timeout = timeout;
    let state = crate::app::state(&config).expect("the gateway's state");
    for case in cases {
        let started = tokio::time::Instant::now();
        let mut session = Session::start((case.transport)(&state), &state);
        if let Some(params) = case.startup {
            session.client.startup(params).await;
        }
        let mut heard = Vec::new();
        while heard.last() != Some(&Heard::Closed) {
            heard.push(session.client.recv().await);
        }
        assert_eq!(heard, case.heard, "{}", case.name);
        let waited = started.elapsed();
        assert!(
            (timeout..timeout + Duration::from_secs(1)).contains(&waited),
            "{}: answered after {waited:?}",
            case.name
        );
        session.end().await;
    }
}
