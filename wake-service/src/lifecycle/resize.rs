//! Changing an endpoint's size: the autoscaler's decisions, a fixed-size endpoint's manual
//! resize and a range change. The driver applies the size to the running compute first (live:
//! nothing is interrupted), then the store records it with its reason (a `resized` event) and
//! moves metering to the new size at that moment. A suspended endpoint only has its size
//! stored: its next start applies it.

use wake_api::admin::EndpointState;

use super::{compute_error, Computes, LifecycleError};
use crate::autoscale::sizing::{Cu, CuRange, SizeError, MAX_CEILING};
use crate::compute::ComputeDriver;
use crate::store::EndpointRow;

/// Who resized, for the event and the `wake_autoscale_resizes_total{cause}` label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResizeCause {
    /// The policy's decision, with its reason and signals.
    Autoscaler(String),
    /// `POST /v1/endpoints/{id}/resize`.
    Api,
    /// A PATCH of `min_cu`/`max_cu` left the size outside the range.
    Range,
}

impl ResizeCause {
    pub fn label(&self) -> &'static str {
        match self {
            ResizeCause::Autoscaler(_) => "autoscaler",
            ResizeCause::Api => "api",
            ResizeCause::Range => "range",
        }
    }

    fn detail(&self, from: Cu, to: Cu) -> String {
        match self {
            ResizeCause::Autoscaler(reason) => format!("autoscaler: {reason}"),
            ResizeCause::Api => format!("api: resize from {from} CU to {to} CU"),
            ResizeCause::Range => {
                format!("range: {from} CU is outside the new min_cu..max_cu; now {to} CU")
            }
        }
    }
}

/// The size a stored value stands for (the store holds what the API validated; anything else
/// is brought to the nearest valid size).
pub fn stored_cu(value: f64) -> Cu {
    Cu::round_up(value).min(MAX_CEILING)
}

/// The range a row stores.
pub fn stored_range(row: &EndpointRow) -> CuRange {
    let (min, max) = (stored_cu(row.min_cu), stored_cu(row.max_cu));
    CuRange::new(min, max).unwrap_or(CuRange::fixed(min))
}

fn invalid(e: SizeError) -> LifecycleError {
    LifecycleError::Invalid(e.to_string())
}

impl Computes {
    /// The size ceiling the API accepts (`--max-cu`).
    pub fn ceiling(&self) -> Cu {
        self.config.ceiling
    }

    /// Validates `min_cu`/`max_cu` against the ceiling (0.25 steps, min <= max).
    pub(super) fn parse_range(&self, min: f64, max: f64) -> Result<CuRange, LifecycleError> {
        CuRange::parse(min, max, self.config.ceiling).map_err(invalid)
    }

    /// Resizes the endpoint's running compute to `to`. `Ok(None)` when the autoscaler should
    /// let it be: another operation holds the endpoint, or it is no longer active.
    pub async fn autoscale(
        &self,
        id: &str,
        to: Cu,
        reason: String,
    ) -> Result<Option<EndpointRow>, LifecycleError> {
        let Some(_guard) = self.try_lock(id).await else {
            return Ok(None);
        };
        let row = self.row(id).await?;
        if row.state != EndpointState::Active || row.operation.is_some() {
            return Ok(None);
        }
        self.apply_size(&row, to, None, ResizeCause::Autoscaler(reason))
            .await
            .map(Some)
    }

    /// `POST /v1/endpoints/{id}/resize`: a fixed-size endpoint (min = max) gets size `cu`
    /// (min = max = cu), applied to its running compute at once.
    pub async fn resize(&self, id: &str, cu: f64) -> Result<EndpointRow, LifecycleError> {
        let to = Cu::parse("cu", cu, self.config.ceiling).map_err(invalid)?;
        let _guard = self.lock(id).await?;
        let row = self.row(id).await?;
        if !stored_range(&row).is_fixed() {
            return Err(LifecycleError::Conflict(format!(
                "endpoint '{id}' autoscales between min_cu {} and max_cu {}: change them with PATCH instead",
                row.min_cu, row.max_cu
            )));
        }
        if row.state != EndpointState::Active || row.operation.is_some() {
            return Err(LifecycleError::Conflict(format!(
                "endpoint '{id}' is {}: a resize applies to a running compute (wake it first, or PATCH min_cu and max_cu to change the size its next start gets)",
                row.operation.map_or(row.state.as_str(), |o| o.as_str())
            )));
        }
        let range = (to.as_f64(), to.as_f64());
        self.apply_size(&row, to, Some(range), ResizeCause::Api)
            .await
    }

    /// After a PATCH of the range: a size now outside it is brought inside, on the running
    /// compute when the endpoint is active, else in the store for its next start.
    pub(super) async fn fit_range(&self, id: &str) -> Result<EndpointRow, LifecycleError> {
        let _guard = self.lock(id).await?;
        let row = self.row(id).await?;
        let current = stored_cu(row.current_cu);
        let to = stored_range(&row).clamp(current);
        if to == current {
            return Ok(row);
        }
        if row.state == EndpointState::Active && row.operation.is_none() {
            return self.apply_size(&row, to, None, ResizeCause::Range).await;
        }
        let detail = ResizeCause::Range.detail(current, to);
        self.store
            .set_size(id, to.as_f64(), None, &detail)
            .await?
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))
    }

    /// The driver applies `to`, then the store records it (with `range` for a fixed size).
    async fn apply_size(
        &self,
        row: &EndpointRow,
        to: Cu,
        range: Option<(f64, f64)>,
        cause: ResizeCause,
    ) -> Result<EndpointRow, LifecycleError> {
        let from = stored_cu(row.current_cu);
        let mut spec = Self::spec(row);
        spec.cu = to;
        let began = std::time::Instant::now();
        self.driver
            .resize(&spec)
            .await
            .map_err(compute_error(&row.id))?;
        let detail = cause.detail(from, to);
        let updated = self
            .store
            .set_size(&row.id, to.as_f64(), range, &detail)
            .await?
            .ok_or_else(|| LifecycleError::NotFound(row.id.clone()))?;
        self.metrics
            .autoscale
            .observe_resize(cause.label(), from, to, began.elapsed());
        tracing::info!(endpoint = %row.id, from = %from, to = %to, %detail, "resized");
        Ok(updated)
    }
}
