//! Leadership among replicas sharing one state store: one replica at a time holds the leader
//! lock (a session advisory lock on a dedicated store connection, [`Store::try_lead`]; a
//! crashed leader releases it by dying). Only the leader reconciles computes with the store,
//! creates the default endpoint and runs the suspend [`scheduler`], the [`autoscaler`] and metering's checkpoints
//! ([`Metering::run`]); the others serve the API
//! and try for the lock every [`LEADER_RETRY`].
//!
//! The leader watches its lock: the lock lives as long as its connection, and a connection
//! can go without the replica dying (the store restarted, a proxy or an operator closed it).
//! A leader whose lock connection closed, or stopped answering within [`LOCK_ANSWER`], stops
//! its scheduler and goes back to following, so that two replicas never go on leading at
//! once. `wake_leader` in the metrics is 1 on the replica that leads.

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
use crate::{autoscaler, branch_expiry, scheduler};

/// How often a replica that is not the leader tries to become it.
pub const LEADER_RETRY: Duration = Duration::from_secs(2);
/// How often the leader looks whether its lock connection closed (no round trip).
const LOCK_WATCH: Duration = Duration::from_millis(100);
/// How often the leader asks the store over its lock connection (a connection that dies
/// silently is only found by asking; the question also keeps it from looking idle).
const LOCK_PROBE: Duration = Duration::from_secs(2);
/// How long that question may take before the leader gives the lock up.
const LOCK_ANSWER: Duration = Duration::from_secs(10);

/// This replica's part in the election, from startup until shutdown.
pub struct Election {
    /// Holds the lock (watching it) or tries for it; returns it when it holds it at the end.
    campaign: JoinHandle<Option<Leadership>>,
    /// Ends the campaign ([`Election::finish`]).
    stop: CancellationToken,
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
        };
        computes.metrics().leader.set(0);
        let lead = match computes.store().try_lead().await? {
            Some(lock) => {
                leader.startup().await?;
                tracing::info!("leading: this replica holds the leader lock");
                Some((lock, leader.start_scheduler()))
            }
            None => {
                tracing::info!("another replica leads; serving the API and waiting to take over");
                None
            }
        };
        let stop = CancellationToken::new();
        let campaign = tokio::spawn(campaign(
            computes.store().clone(),
            leader,
            lead,
            shutdown.clone(),
            stop.clone(),
        ));
        Ok(Election { campaign, stop })
    }

    /// Once `shutdown` fired: stops following, or stops the scheduler and returns the leader
    /// lock when this replica leads (drop it to let another lead).
    pub async fn finish(self) -> Option<Leadership> {
        self.stop.cancel();
        match self.campaign.await {
            Ok(lock) => lock,
            Err(e) => {
                tracing::error!(error = %e, "the leader election task failed");
                None
            }
        }
    }
}

/// What a replica does when it becomes the leader.
struct Leader {
    computes: Arc<Computes>,
    metering: Arc<Metering>,
    config: ServeConfig,
}

/// The scheduler, the autoscaler and metering's loop of one term as leader.
struct Term {
    scheduling: CancellationToken,
    tasks: TaskTracker,
}

impl Term {
    /// Stops the term's loops and waits for them (an operation they started finishes).
    async fn end(self) {
        self.scheduling.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Leader {
    /// Reconciles computes with the store and creates the default endpoint on first start.
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

    fn start_scheduler(&self) -> Term {
        let term = Term {
            scheduling: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        term.tasks.spawn(scheduler::run(
            self.computes.clone(),
            self.config.scheduler,
            term.scheduling.clone(),
        ));
        term.tasks
            .spawn(self.metering.clone().run(term.scheduling.clone()));
        term.tasks.spawn(autoscaler::run(
            self.computes.clone(),
            self.config.autoscale.clone(),
            term.scheduling.clone(),
        ));
        term.tasks.spawn(branch_expiry::run(
            self.computes.clone(),
            term.scheduling.clone(),
        ));
        self.computes.metrics().leader.set(1);
        term
    }

    /// Takes over after another leader went: a failed reconcile is logged, and the scheduler
    /// runs anyway.
    async fn take_over(&self) -> Term {
        tracing::info!("became the leader");
        if let Err(e) = self.startup().await {
            tracing::error!(error = %e, "leader startup failed");
        }
        self.start_scheduler()
    }
}

/// The election from startup to `stop`: while leading, watches the lock and steps down when
/// it is lost; while following, tries for the lock every [`LEADER_RETRY`] until `shutdown`.
async fn campaign(
    store: Store,
    leader: Leader,
    mut lead: Option<(Leadership, Term)>,
    shutdown: CancellationToken,
    stop: CancellationToken,
) -> Option<Leadership> {
    loop {
        if let Some((lock, term)) = lead.take() {
            if watch(&lock, &stop).await {
                term.end().await;
                return Some(lock);
            }
            tracing::error!(
                "lost the leader lock (its state-store connection closed or stopped answering): \
                 stopping the scheduler and following"
            );
            leader.computes.metrics().leader.set(0);
            // The lock (if it is only slow to answer) goes once the term's work is done.
            term.end().await;
            drop(lock);
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(LEADER_RETRY) => {}
        }
        if let Ok(Some(lock)) = store.try_lead().await {
            let term = leader.take_over().await;
            lead = Some((lock, term));
        }
    }
}

/// Waits until `stop` fires (true) or the lock is lost (false).
async fn watch(lock: &Leadership, stop: &CancellationToken) -> bool {
    let mut watched = Duration::ZERO;
    loop {
        tokio::select! {
            () = stop.cancelled() => return true,
            () = tokio::time::sleep(LOCK_WATCH) => {}
        }
        watched += LOCK_WATCH;
        if lock.connection_closed() {
            return false;
        }
        if watched >= LOCK_PROBE {
            watched = Duration::ZERO;
            tokio::select! {
                () = stop.cancelled() => return true,
                held = lock.held(LOCK_ANSWER) => if !held { return false },
            }
        }
    }
}
