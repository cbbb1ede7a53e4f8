//! Postgres clients spoken by hand (every message visible), and a throwaway certificate
//! authority for TLS tests.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::sasl;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use gateway::TlsFiles;

// --- a raw protocol client --------------------------------------------------------------

/// The Postgres protocol spoken by hand, over any stream, so tests can see every message.
pub struct Raw<S> {
    pub io: S,
    pub buf: BytesMut,
}

/// A session's startup result.
#[derive(Debug)]
pub struct Login {
    pub process_id: i32,
    pub secret_key: i32,
    pub params: HashMap<String, String>,
}

pub type Fields = HashMap<char, String>;

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    pub fn new(io: S) -> Self {
        Raw {
            io,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    /// The next message (tag and body), or `None` at end of stream.
    pub async fn recv(&mut self) -> Option<(u8, Bytes)> {
        loop {
            let whole = gateway::frame::frame_length(&self.buf, usize::MAX)
                .expect("the gateway frames its messages")
                .filter(|len| self.buf.len() >= *len);
            if let Some(len) = whole {
                let mut message = self.buf.split_to(len).freeze();
                let tag = message[0];
                message.advance(gateway::frame::HEADER_LEN);
                return Some((tag, message));
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads to the end of the stream and returns the first ErrorResponse's fields.
    pub async fn error(&mut self) -> Fields {
        loop {
            match self.recv().await {
                Some((b'E', body)) => return fields(&body),
                Some(_) => continue,
                None => panic!("the connection closed without an ErrorResponse"),
            }
        }
    }

    /// Startup and authentication (cleartext or SCRAM, as asked) up to ReadyForQuery.
    pub async fn login(
        &mut self,
        params: &[(&str, &str)],
        password: &str,
    ) -> Result<Login, Fields> {
        let mut out = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut out).expect("startup");
        self.send(&out).await;
        let mut scram: Option<sasl::ScramSha256> = None;
        let mut login = Login {
            process_id: 0,
            secret_key: 0,
            params: HashMap::new(),
        };
        loop {
            let (tag, body) = self.recv().await.expect("a reply during startup");
            out.clear();
            match tag {
                b'R' => match i32::from_be_bytes([body[0], body[1], body[2], body[3]]) {
                    0 => {}
                    3 => {
                        frontend::password_message(password.as_bytes(), &mut out).expect("pw");
                        self.send(&out).await;
                    }
                    10 => {
                        let s = sasl::ScramSha256::new(
                            password.as_bytes(),
                            sasl::ChannelBinding::unsupported(),
                        );
                        frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut out)
                            .expect("sasl");
                        self.send(&out).await;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().expect("SASL started");
                        s.update(&body[4..]).expect("server-first");
                        frontend::sasl_response(s.message(), &mut out).expect("sasl");
                        self.send(&out).await;
                    }
                    12 => scram
                        .as_mut()
                        .expect("SASL started")
                        .finish(&body[4..])
                        .expect("the server's signature verifies"),
                    other => panic!("unexpected authentication request {other}"),
                },
                b'S' => {
                    let mut parts = body.split(|&b| b == 0);
                    let name = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    let value = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    login.params.insert(name.into_owned(), value.into_owned());
                }
                b'K' => {
                    login.process_id = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    login.secret_key = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                }
                b'Z' => return Ok(login),
                b'E' => return Err(fields(&body)),
                b'N' | b'v' => {}
                other => panic!("unexpected message {} during startup", other as char),
            }
        }
    }

    /// Runs a simple query; returns its rows' first column as text, or the error.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<String>, Fields> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).expect("query");
        self.send(&out).await;
        self.read_result().await
    }

    pub async fn read_result(&mut self) -> Result<Vec<String>, Fields> {
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.recv().await.expect("a reply to the query") {
                (b'D', body) => {
                    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                    let text = if len < 0 {
                        "NULL".to_owned()
                    } else {
                        String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned()
                    };
                    rows.push(text);
                }
                (b'E', body) => error = Some(fields(&body)),
                (b'Z', _) => break,
                _ => {}
            }
        }
        error.map_or(Ok(rows), Err)
    }
}

pub fn fields(body: &[u8]) -> Fields {
    body.split(|&b| b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (f[0] as char, String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}

// --- TLS -------------------------------------------------------------------------------

pub struct TestCa {
    dir: std::path::PathBuf,
    roots: rustls::RootCertStore,
}

/// A CA and a server certificate for `localhost` and `*.localtest.me`, made now.
pub fn test_ca() -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(vec!["localhost".to_owned(), "*.localtest.me".to_owned()])
        .expect("params");
    let cert = params.signed_by(&key, &issuer).expect("cert");
    let dir = std::env::temp_dir().join(format!(
        "gateway-sessions-tls-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("server.crt"), cert.pem()).expect("write");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).expect("root");
    TestCa { dir, roots }
}

impl TestCa {
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.dir.join("server.crt"),
            key: self.dir.join("server.key"),
        }
    }

    pub fn connector(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn server_name(name: &str) -> rustls_pki_types::ServerName<'static> {
    rustls_pki_types::ServerName::try_from(name.to_owned()).expect("name")
}
