//! The drivers a wake service runs, as one [`ComputeDriver`]: each call goes to the driver
//! of its compute's [`Target`] (the store records it per endpoint). `local` is always there;
//! `railway` when a Railway API token is configured.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use wake_api::admin::{Addresses, ComputeSize};

use super::local::LocalDriver;
use super::railway::RailwayDriver;
use super::{
    ComputeDriver, ComputeError, ComputeLoad, ComputeSpec, Health, PoolerRole, PoolerStats,
    StopMode, Target,
};
use crate::autoscale::sizing::Cu;

pub struct Drivers {
    local: Arc<dyn ComputeDriver>,
    railway: Option<Arc<RailwayDriver>>,
}

impl Drivers {
    pub fn new(local: LocalDriver, railway: Option<RailwayDriver>) -> Drivers {
        Drivers {
            local: Arc::new(local),
            railway: railway.map(Arc::new),
        }
    }

    /// Only `local` (tests and tools that drive one local driver through the lifecycle).
    pub fn local(local: Arc<dyn ComputeDriver>) -> Drivers {
        Drivers {
            local,
            railway: None,
        }
    }

    /// The Railway driver, or why there is none.
    pub fn railway(&self) -> Result<&RailwayDriver, ComputeError> {
        self.railway.as_deref().ok_or_else(|| {
            ComputeError::Process(
                "the railway driver is not configured: start the wake service with RAILWAY_API_TOKEN"
                    .to_owned(),
            )
        })
    }

    /// How long a wake of this compute may take when it is not the usual milliseconds: a
    /// Railway redeploy's resume budget (`--railway-resume-timeout-seconds`).
    pub fn wake_budget(&self, spec: &ComputeSpec) -> Option<Duration> {
        match (&spec.target, &self.railway) {
            (Target::Railway(_), Some(railway)) => Some(railway.resume_budget()),
            _ => None,
        }
    }

    /// The cap on gateways' own pools of direct connections for the compute's size.
    pub fn pool_max_conns(&self, spec: &ComputeSpec) -> u32 {
        self.pool_cap(spec.cu, matches!(spec.target, Target::Railway(_)))
    }

    /// [`Self::pool_max_conns`] from a size and whether the compute is on Railway.
    pub fn pool_cap(&self, cu: Cu, railway: bool) -> u32 {
        let sized = cu.size().gateway_pool_max_conns;
        match (&self.railway, railway) {
            (Some(driver), true) => sized.min(driver.pool_max_conns()),
            _ => sized,
        }
    }

    fn of(&self, spec: &ComputeSpec) -> Result<&dyn ComputeDriver, ComputeError> {
        match spec.target {
            Target::Local => Ok(self.local.as_ref()),
            Target::Railway(_) => Ok(self.railway()?),
        }
    }
}

#[async_trait]
impl ComputeDriver for Drivers {
    fn name(&self) -> &'static str {
        self.local.name()
    }

    async fn create(&self, spec: &ComputeSpec) -> Result<(), ComputeError> {
        self.of(spec)?.create(spec).await
    }

    async fn start(&self, spec: &ComputeSpec) -> Result<Addresses, ComputeError> {
        self.of(spec)?.start(spec).await
    }

    async fn stop_postgres(&self, spec: &ComputeSpec, mode: StopMode) -> Result<(), ComputeError> {
        self.of(spec)?.stop_postgres(spec, mode).await
    }

    async fn stop(&self, spec: &ComputeSpec) -> Result<(), ComputeError> {
        self.of(spec)?.stop(spec).await
    }

    fn stops_with_service(&self, spec: &ComputeSpec) -> bool {
        self.of(spec).map_or(true, |d| d.stops_with_service(spec))
    }

    async fn pause_pooler(
        &self,
        spec: &ComputeSpec,
        timeout: Duration,
    ) -> Result<bool, ComputeError> {
        self.of(spec)?.pause_pooler(spec, timeout).await
    }

    async fn resume_pooler(&self, spec: &ComputeSpec) -> Result<(), ComputeError> {
        self.of(spec)?.resume_pooler(spec).await
    }

    async fn pooler_stats(&self, spec: &ComputeSpec) -> Result<Option<PoolerStats>, ComputeError> {
        self.of(spec)?.pooler_stats(spec).await
    }

    async fn resize(&self, spec: &ComputeSpec) -> Result<ComputeSize, ComputeError> {
        self.of(spec)?.resize(spec).await
    }

    fn size(&self, spec: &ComputeSpec) -> Option<ComputeSize> {
        self.of(spec).ok()?.size(spec)
    }

    async fn load(&self, spec: &ComputeSpec) -> Result<ComputeLoad, ComputeError> {
        self.of(spec)?.load(spec).await
    }

    async fn destroy(&self, spec: &ComputeSpec) -> Result<(), ComputeError> {
        self.of(spec)?.destroy(spec).await
    }

    async fn health(&self, spec: &ComputeSpec) -> Result<Health, ComputeError> {
        self.of(spec)?.health(spec).await
    }

    async fn admin_database(
        &self,
        spec: &ComputeSpec,
        database: &str,
    ) -> Result<tokio_postgres::Client, ComputeError> {
        self.of(spec)?.admin_database(spec, database).await
    }

    async fn set_pooler_roles(
        &self,
        spec: &ComputeSpec,
        roles: &[PoolerRole],
    ) -> Result<(), ComputeError> {
        self.of(spec)?.set_pooler_roles(spec, roles).await
    }

    /// Only local computes are found on disk without the store knowing them.
    async fn quarantine(&self, endpoint: &str) -> Result<String, ComputeError> {
        self.local.quarantine(endpoint).await
    }

    async fn list(&self) -> Result<Vec<String>, ComputeError> {
        self.local.list().await
    }
}
