//! Leadership among replicas sharing one state store: one replica at a time holds the leader
//! lock (a session advisory lock on a dedicated store connection, [`Store::try_lead`]; a
//! crashed leader releases it by dying). Only the leader reconciles computes with the store,
//! creates the default endpoint and runs the suspend [`scheduler`], the [`autoscaler`] and metering's checkpoints
//! ([`Metering::run`]); the others serve the API
//! and try for the lock every [`LEADER_RETRY`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServeConfig;
use crate::lifecycle::Computes;
use crate::store::{Leadership, Store};
use crate::usage::Metering;
use crate::{autoscaler, scheduler};

/// How often a replica that is not the leader tries to become it.
pub const LEADER_RETRY: Duration = Duration::from_secs(2);

/// This replica's part in the election, from startup until shutdown.
pub struct Election {
    /// The lock, once held; or the task trying for it, which returns it.
    state: State,
    /// Stops the scheduler (before computes are stopped).
    scheduling: CancellationToken,
    scheduler_tasks: TaskTracker,
}

enum State {
    Leading(Leadership),
    Following(JoinHandle<Option<Leadership>>),
}

impl Election {
    /// Leads at once if no other replica does (reconcile, default endpoint, scheduler: an
    /// error here refuses the start), else follows: tries again every [`LEADER_RETRY`] until
    /// `shutdown`, and leads once it gets the lock.
    pub async fn start(
        computes: &Arc<Computes>,
        metering: &Arc<Metering>,
        config: &ServeConfig,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Election> {
        let leader = Leader {
            computes: computes.clone(),
            metering: metering.clone(),
            config: config.clone(),
            scheduling: CancellationToken::new(),
            scheduler_tasks: TaskTracker::new(),
        };
        let (scheduling, scheduler_tasks) =
            (leader.scheduling.clone(), leader.scheduler_tasks.clone());
        let state = match computes.store().try_lead().await? {
            Some(lock) => {
                leader.take_over().await?;
                State::Leading(lock)
            }
            None => {
                tracing::info!("another replica leads; serving the API and waiting to take over");
                State::Following(tokio::spawn(follow(
                    computes.store().clone(),
                    leader,
                    shutdown.clone(),
                )))
            }
        };
        Ok(Election {
            state,
            scheduling,
            scheduler_tasks,
        })
    }

    /// Once `shutdown` fired: stops following and waits for the scheduler to stop. Returns the
    /// leader lock when this replica leads (drop it to let another lead).
    pub async fn finish(self) -> Option<Leadership> {
        let lock = match self.state {
            State::Leading(lock) => Some(lock),
            State::Following(task) => task.await.ok().flatten(),
        };
        self.scheduling.cancel();
        self.scheduler_tasks.close();
        self.scheduler_tasks.wait().await;
        lock
    }
}

/// What a replica does when it becomes the leader.
struct Leader {
    computes: Arc<Computes>,
    metering: Arc<Metering>,
    config: ServeConfig,
    scheduling: CancellationToken,
    scheduler_tasks: TaskTracker,
}

impl Leader {
    /// Reconciles computes with the store, creates the default endpoint on first start, then
    /// starts the scheduler; an error (which refuses the start) starts nothing.
    async fn take_over(&self) -> anyhow::Result<()> {
        let startup = self.startup().await;
        if startup.is_ok() {
            self.start_scheduler();
        }
        startup
    }

    async fn startup(&self) -> anyhow::Result<()> {
        self.computes
            .reconcile()
            .await
            .context("reconciling computes with the state store")?;
        if let Some(default) = &self.config.default_endpoint {
            self.computes
                .bootstrap_default(
                    &default.id,
                    &default.role,
                    &default.password.0,
                    &default.database,
                )
                .await
                .context("creating the default endpoint")?;
        }
        Ok(())
    }

    fn start_scheduler(&self) {
        self.scheduler_tasks.spawn(scheduler::run(
            self.computes.clone(),
            self.config.scheduler,
            self.scheduling.clone(),
        ));
        self.scheduler_tasks
            .spawn(self.metering.clone().run(self.scheduling.clone()));
        self.scheduler_tasks.spawn(autoscaler::run(
            self.computes.clone(),
            self.config.autoscale.clone(),
            self.scheduling.clone(),
        ));
    }
}

/// Tries for the lock every [`LEADER_RETRY`] until `shutdown`; once it holds it, leads (a
/// failed reconcile is logged, and the scheduler runs anyway) and returns it.
async fn follow(store: Store, leader: Leader, shutdown: CancellationToken) -> Option<Leadership> {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(LEADER_RETRY) => {}
        }
        if let Ok(Some(lock)) = store.try_lead().await {
            tracing::info!("became the leader");
            if let Err(e) = leader.startup().await {
                tracing::error!(error = %e, "leader startup failed");
            }
            leader.start_scheduler();
            return Some(lock);
        }
    }
}
