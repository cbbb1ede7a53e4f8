//! Wiring: configuration, building the shared state, the listeners, signals and the drain.

pub mod config;
#[cfg(test)]
mod session_tests;

pub use config::Config;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use rand::RngCore;

use crate::auth::jwt::JwtValidator;
use crate::control_plane::client::ControlPlaneClient;
use crate::control_plane::jwt_rules::JwtRules;
use crate::control_plane::routes::RouteTable;
use crate::frontend::state::AppState;
use crate::frontend::tls::{Tls, TlsError};
use crate::obs::labels::Outcome;
use crate::obs::metrics::Metrics;
use crate::proxy::cancel::{Cancels, AUTO_PEER_ADDRESS};
use crate::proxy::pool::Pool;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot build the control-plane client: {0}")]
    ControlPlane(#[from] reqwest::Error),
    #[error("cannot build the client for peer gateways: {0}")]
    Peers(reqwest::Error),
}

/// Builds the shared state for a configuration; fails only on unreadable TLS files (or an HTTP
/// client that cannot be built).
pub fn state(config: &Config) -> Result<Arc<AppState>, StateError> {
    let metrics = Arc::new(Metrics::new());
    let tls = match &config.tls {
        Some(files) => Some(Tls::load(&files.cert, &files.key)?),
        None => None,
    };
    let control_plane = match &config.control_plane {
        Some(cp) => Some(Arc::new(ControlPlaneClient::new(
            cp.clone(),
            metrics.clone(),
        )?)),
        None => None,
    };
    let mut mock_auth_key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut mock_auth_key);
    let token = config
        .control_plane
        .as_ref()
        .and_then(|cp| cp.token.as_ref());
    let cancels = Cancels::new(
        &config.cancels,
        token.map(|t| t.expose()),
        metrics.clone(),
        config.pool.connect_timeout,
    )
    .map_err(StateError::Peers)?;
    Ok(Arc::new(AppState {
        jwt_rules: Arc::new(JwtRules::new(control_plane.clone(), &config.jwt_rules)),
        jwt: JwtValidator::new(config.jwt.clone(), &metrics),
        routes: Arc::new(RouteTable::new(
            config.routes.iter().cloned(),
            control_plane,
            config.route_cache.clone(),
            metrics.clone(),
        )),
        default_endpoint: config.default_endpoint.clone(),
        pool: Pool::new(config.pool.clone(), metrics.clone()),
        types: Default::default(),
        metrics,
        sessions: config.sessions.clone(),
        tls,
        cancels: Arc::new(cancels),
        usage: Default::default(),
        activity: crate::control_plane::activity::Activity::new(),
        connections: crate::base::limits::ConnectionSlots::new(
            config.clients.max_connections,
            config.clients.max_connections_per_ip,
        ),
        endpoint_limits: crate::base::limits::EndpointLimits::new(
            config.endpoint_limits.max_connections,
            config.endpoint_limits.max_rps,
        ),
        http: config.http.clone(),
        handshake_pool: crate::frontend::handshake::HandshakePool::new(
            config.clients.max_handshake_bytes,
        ),
        require_tls: config.clients.require_tls,
        tasks: TaskTracker::new(),
        stop_sessions: CancellationToken::new(),
        mock_auth_key,
        draining: AtomicBool::new(false),
    }))
}

/// Binds both listeners and serves until `shutdown` is cancelled and the drain is over.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let public = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.admin_listen))?;
    serve(config, public, admin, shutdown).await
}

/// Serves on already-bound listeners (tests bind port 0) until `shutdown` and the drain end.
pub async fn serve(
    config: Config,
    public: TcpListener,
    admin: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = with_peer_address(config, &admin).await?;
    let state = state(&config)?;
    let addr = |l: &TcpListener| {
        l.local_addr()
            .map_or_else(|_| "?".to_owned(), |a: SocketAddr| a.to_string())
    };
    tracing::info!(
        listen = %addr(&public),
        admin = %addr(&admin),
        routes = ?config.routes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        control_plane = config.control_plane.as_ref().map(|c| c.url.as_str()),
        default_endpoint = %config.default_endpoint,
        tls = config.tls.is_some(),
        peer_address = config.cancels.peer_address.as_deref(),
        cancel_tag = state.cancels.advert().map(|p| p.cancel_tag),
        "gateway started"
    );
    let tasks = TaskTracker::new();
    let admin_stop = CancellationToken::new();
    if state.tls.is_some() {
        // The handler is installed before anything is served: a SIGHUP right after the
        // gateway reports ready must reload, not end the process (its default action).
        match signal(SignalKind::hangup()) {
            Ok(hangups) => {
                tasks.spawn(reload_tls_on_sighup(
                    state.clone(),
                    hangups,
                    admin_stop.clone(),
                ));
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS reload is off"),
        }
    }
    tasks.spawn(crate::frontend::server::serve_admin(
        admin,
        state.clone(),
        admin_stop.clone(),
    ));
    tasks.spawn(state.pool.clone().run_reaper(admin_stop.clone()));
    // Activity reports go on while sessions drain, so a draining endpoint is not suspended.
    if let (Some(control_plane), Some(interval)) =
        (state.routes.control_plane(), config.activity_interval)
    {
        let held = crate::proxy::reporter::Held {
            activity: state.activity.clone(),
            routes: state.routes.clone(),
            jwt_rules: state.jwt_rules.clone(),
            pool: state.pool.clone(),
            metrics: state.metrics.clone(),
            usage: state.usage.clone(),
            cancels: state.cancels.clone(),
        };
        tasks.spawn(crate::proxy::reporter::run_reporter(
            held,
            control_plane.clone(),
            interval,
            admin_stop.clone(),
        ));
    }
    crate::frontend::server::serve_public(public, state, shutdown, config.shutdown_timeout).await;
    admin_stop.cancel();
    tasks.close();
    tasks.wait().await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Resolves `--peer-addr auto`: the local address this host reaches the control plane from
/// (the other replicas share its network), with the admin listener's port.
async fn with_peer_address(mut config: Config, admin: &TcpListener) -> anyhow::Result<Config> {
    if config.cancels.peer_address.as_deref() != Some(AUTO_PEER_ADDRESS) {
        return Ok(config);
    }
    let admin = admin.local_addr()?;
    let url = config
        .control_plane
        .as_ref()
        .map(|cp| cp.url.clone())
        .ok_or_else(|| anyhow::anyhow!("--peer-addr auto needs a control plane"))?;
    let ip = local_ip_toward(&url)
        .await
        .map_err(|e| anyhow::anyhow!("--peer-addr auto: no route to the control plane: {e}"))?;
    if admin.ip().is_loopback() && !ip.is_loopback() {
        anyhow::bail!("--peer-addr auto found {ip}, but the admin listener ({admin}) takes loopback connections only; listen on an address the other replicas reach (e.g. --admin-listen 0.0.0.0:4480)");
    }
    let address = SocketAddr::new(ip, admin.port()).to_string();
    tracing::info!(peer_address = %address, "--peer-addr auto");
    config.cancels.peer_address = Some(address);
    Ok(config)
}

/// The local address the kernel picks to reach `url`'s host (a connected UDP socket sends
/// nothing).
async fn local_ip_toward(url: &str) -> std::io::Result<IpAddr> {
    let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_owned());
    let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let target = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => SocketAddr::new(ip.into(), port),
        Some(url::Host::Ipv6(ip)) => SocketAddr::new(ip.into(), port),
        Some(url::Host::Domain(name)) => tokio::net::lookup_host((name, port))
            .await?
            .next()
            .ok_or_else(|| invalid("the control plane's name resolves to nothing"))?,
        None => return Err(invalid("the control-plane URL has no host")),
    };
    let any: IpAddr = if target.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = std::net::UdpSocket::bind((any, 0))?;
    socket.connect(target)?;
    Ok(socket.local_addr()?.ip())
}

/// Re-reads the TLS certificate and key on every SIGHUP until `stop`.
async fn reload_tls_on_sighup(
    state: Arc<AppState>,
    mut hangups: tokio::signal::unix::Signal,
    stop: CancellationToken,
) {
    let Some(tls) = state.tls.as_ref() else {
        return;
    };
    loop {
        tokio::select! {
            received = hangups.recv() => if received.is_none() { return },
            () = stop.cancelled() => return,
        }
        let outcome = match tls.reload() {
            Ok(()) => {
                tracing::info!("SIGHUP: TLS certificate reloaded");
                Outcome::Ok
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the current certificate");
                Outcome::Error
            }
        };
        state.metrics.tls_reloads.inc(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn peer_address_auto_is_the_address_toward_the_control_plane() {
        let loopback = local_ip_toward("http://127.0.0.1:4400/proxy/api/v1").await;
        assert_eq!(loopback.expect("a route"), IpAddr::from([127, 0, 0, 1]));
        let named = local_ip_toward("http://localhost:4400/proxy/api/v1").await;
        assert!(named.expect("a route").is_loopback());

        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = admin.local_addr().expect("addr").port();
        let mut config =
            Config::for_tests_with_control_plane("http://127.0.0.1:4400/proxy/api/v1", Some("t"));
        config.cancels.peer_address = Some(AUTO_PEER_ADDRESS.into());
        let config = with_peer_address(config, &admin).await.expect("resolved");
        assert_eq!(
            config.cancels.peer_address,
            Some(format!("127.0.0.1:{port}"))
        );
        // A fixed address is left as it is.
        let config = with_peer_address(config, &admin).await.expect("as is");
        assert_eq!(
            config.cancels.peer_address,
            Some(format!("127.0.0.1:{port}"))
        );
    }
}
