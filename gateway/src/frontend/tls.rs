//! TLS for the public listener: one certificate (PEM files) for https, wss, Postgres after
//! SSLRequest and Postgres 17 direct TLS. ALPN offers `postgresql`, `h2` and `http/1.1`.
//! [`Tls::reload`] re-reads the files (on SIGHUP) and swaps the configuration atomically:
//! handshakes in progress finish with the old one, a failed reload keeps it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain from {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot read the private key from {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("invalid certificate or key: {0}")]
    Config(#[from] rustls::Error),
}

pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    config: ArcSwap<ServerConfig>,
}

impl Tls {
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        Ok(Tls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            config: ArcSwap::from_pointee(server_config(cert, key)?),
        })
    }

    /// Re-reads the certificate and key; on failure the current ones stay in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.config
            .store(Arc::new(server_config(&self.cert, &self.key)?));
        Ok(())
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate {
        path: cert.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![
        ALPN_POSTGRESQL.to_vec(),
        ALPN_H2.to_vec(),
        ALPN_HTTP1.to_vec(),
    ];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("cert");
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    #[test]
    fn load_reload_and_errors() {
        let dir = std::env::temp_dir().join(format!("gateway-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = write_pair(&dir, "one.example");
        let tls = Tls::load(&cert, &key).expect("valid pair");
        let before = tls.config.load_full();
        assert_eq!(before.alpn_protocols[0], b"postgresql");

        // A broken file on reload keeps the old configuration.
        std::fs::write(&cert, "not a certificate").expect("write");
        assert!(matches!(tls.reload(), Err(TlsError::Certificate { .. })));
        assert!(Arc::ptr_eq(&before, &tls.config.load_full()));

        // A new valid pair is picked up.
        let (new_cert, new_key) = write_pair(&dir, "two.example");
        std::fs::copy(&new_cert, &cert).expect("copy");
        std::fs::copy(&new_key, &key).expect("copy");
        tls.reload().expect("reload");
        assert!(!Arc::ptr_eq(&before, &tls.config.load_full()));

        assert!(matches!(
            Tls::load(&dir.join("missing.crt"), &key),
            Err(TlsError::Certificate { .. })
        ));
        assert!(matches!(Tls::load(&cert, &cert), Err(TlsError::Key { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
