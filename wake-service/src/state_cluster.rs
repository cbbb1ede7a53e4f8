//! The wake service's own embedded state store, used when no `--database-url` is given: a
//! private Postgres 15 cluster under `DATA_DIR/state` that holds the service's state (the
//! [`crate::store`] tables), never an endpoint's data.
//!
//! It listens ONLY on a unix socket (`listen_addresses = ''`), so it can never collide with a
//! TCP port. It runs as an OS user of its own when the wake service is root
//! (`w<tag>_state`, see `compute/local/users.rs`), or as the user every compute shares, and
//! only the wake service's OS user logs in (`local all cloud_admin peer map=wake`, the only
//! pg_hba.conf line). It is started with the same machinery as the local driver's computes
//! (`compute::local`: the spawned postmaster, checked directory descriptors, adoption after a
//! `kill -9`), and, like them, a directory of an earlier version owned by another user is
//! taken over.
//!
//! Layout under its directory: `pgdata/`, `run/` (the socket, 0700), `postgres.log`, and a
//! `created` marker. initdb works in `pgdata.init/`, renamed to `pgdata/` once initdb and
//! configuration succeeded: an existing `pgdata/` is never wiped (a missing marker is written
//! again), a leftover `pgdata.init/` is.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::compute::local::files::Dir;
use crate::compute::local::postgres::{self, Cluster, StartSettings, PGDATA, SUPERUSER};
use crate::compute::local::process::Identity;
use crate::compute::local::{
    canonical_dir, io_error, users, LocalConfig, Principals, Setup, MARKER, RUN,
};
use crate::compute::{ComputeError, StopMode};

/// The port number in the state cluster's socket name (it listens on no TCP port).
const STATE_PORT: u16 = 5432;
/// How long a started (or adopted) cluster may take to accept a login.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// What the `created` marker says.
const MARKER_TEXT: &[u8] = b"wake service state cluster\n";

/// The running embedded state store (see the module documentation).
#[derive(Debug)]
pub struct StateCluster {
    setup: Setup,
    identity: Identity,
    dir: Dir,
    /// Its pg_hba.conf: the unix socket only, and only the wake service's user.
    hba: String,
}

impl StateCluster {
    /// initdb if `dir` has no cluster yet, start it unless already running (adopt a running
    /// postmaster after a kill -9 of the wake service), wait until it accepts connections.
    /// A directory of an earlier version (owned by the shared `postgres` user) is handed to
    /// the state store's own user first.
    pub async fn start(config: &LocalConfig, dir: &Path) -> Result<StateCluster, ComputeError> {
        let setup = Setup::new(config)?;
        let identity = state_identity(&setup).await?;
        let path = canonical_dir(dir, "state directory")?;
        let dir = open_dir(&setup, &identity, &path).await?;
        let hba = format!(
            "# Written by the wake service: unix socket only, and only the wake service's user.\n\
             local all {SUPERUSER} {}\n",
            setup.admin_method()
        );
        let cluster = StateCluster {
            setup,
            identity,
            dir,
            hba,
        };
        let settings = cluster.setup.socket_only_settings(STATE_PORT);
        cluster.init_once(&path, &settings).await?;
        let pid = cluster.cluster().start(&settings, &|_| Ok(())).await?.pid;
        cluster.wait_accepting().await?;
        tracing::info!(dir = %path.display(), pid, user = %cluster.identity.name, "embedded state cluster running");
        Ok(cluster)
    }

    /// initdb when there is no `pgdata/` yet; the marker written when missing; `run/` made.
    async fn init_once(&self, path: &Path, settings: &StartSettings) -> Result<(), ComputeError> {
        let dir = &self.dir;
        if !dir.exists(PGDATA) {
            tracing::info!(dir = %path.display(), "creating the embedded state cluster");
            self.setup
                .init_cluster(&self.identity, dir, &self.hba, settings)
                .await?;
            dir.write(MARKER, MARKER_TEXT, 0o644, None)?;
        } else if !dir.exists(MARKER) {
            tracing::warn!(dir = %path.display(), "the state cluster has no 'created' marker; adopting its data directory as it is (never wiped)");
            dir.write(MARKER, MARKER_TEXT, 0o644, None)?;
        }
        dir.ensure_subdir(RUN, 0o700, self.identity.owner())
            .map_err(io_error(dir))?;
        Ok(())
    }

    /// A "ready" postmaster (spawned or adopted) accepts connections; check with a real login
    /// anyway, briefly retrying.
    async fn wait_accepting(&self) -> Result<(), ComputeError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.connect().await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "state cluster not accepting connections yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(self.dir.error_with_log(
                        format!("the state cluster does not accept connections: {e}"),
                        postgres::LOG,
                    ))
                }
            }
        }
    }

    fn cluster(&self) -> Cluster<'_> {
        self.setup
            .cluster(&self.identity, &self.dir, PGDATA, &self.hba)
    }

    /// host = socket dir, user = cloud_admin, dbname = postgres, no password (peer).
    /// [`Self::connect`] also checks who listens on the socket.
    pub fn connection_config(&self) -> tokio_postgres::Config {
        self.cluster().admin_config(STATE_PORT)
    }

    /// A connection with [`Self::connection_config`], made only once the process behind the
    /// unix socket is known to run as the state store's user.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, ComputeError> {
        let cluster = self.cluster();
        postgres::connect(
            &self.connection_config(),
            &cluster.run_dir,
            STATE_PORT,
            self.identity.uid,
        )
        .await
    }

    /// The OS user the state store runs as.
    pub fn os_user(&self) -> &str {
        &self.identity.name
    }

    /// The postmaster's pid, when one runs.
    pub fn pid(&self) -> Option<i32> {
        match self.cluster().pid_file() {
            postgres::PidFile::Running(pm) => Some(pm.pid),
            _ => None,
        }
    }

    /// Fast shutdown. Nothing to do when it is not running.
    pub async fn stop(&self) -> Result<(), ComputeError> {
        self.cluster().stop(StopMode::Fast).await?;
        tracing::info!(dir = %self.dir.path().display(), "embedded state cluster stopped");
        Ok(())
    }
}

/// The state store's OS user: its own (made when missing) with one user per endpoint, else
/// the one every compute shares.
async fn state_identity(setup: &Setup) -> Result<Identity, ComputeError> {
    match setup.principals() {
        Principals::PerEndpoint { tag } => {
            users::ensure(&users::state_user(tag), &users::comment(tag, "state store")).await
        }
        Principals::Shared(identity) => Ok(identity.clone()),
    }
}

/// Opens `path` (canonical, made by [`canonical_dir`]) for `identity`: reachable for it,
/// taken over from an earlier version's owner, and (created just now, root-owned) handed to
/// it with mode 0700.
async fn open_dir(setup: &Setup, identity: &Identity, path: &Path) -> Result<Dir, ComputeError> {
    setup.make_traversable(path)?;
    let opened = setup
        .take(path, identity)
        .await?
        .ok_or_else(|| ComputeError::Process(format!("{} vanished", path.display())))?;
    let parent = path
        .parent()
        .ok_or_else(|| ComputeError::Process(format!("{} has no parent", path.display())))?;
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| ComputeError::Process(format!("{} has no name", path.display())))?;
    drop(opened);
    let parent_dir = Dir::open(parent)
        .map_err(|e| ComputeError::io(format!("opening {}", parent.display()), e))?
        .ok_or_else(|| ComputeError::Process(format!("{} is missing", parent.display())))?;
    Ok(parent_dir
        .ensure_subdir(name, 0o700, identity.owner())
        .map_err(|e| ComputeError::io(format!("preparing {}", path.display()), e))?
        .trusting(identity.uid))
}
