//! The operations Neon's API reports (`/api/v2/projects/{id}/operations`): every change made
//! through it, recorded once it has finished (local operations finish before the reply).

use time::OffsetDateTime;
use tokio_postgres::Row;

use super::{Store, StoreError};

/// How many operations are kept per endpoint; older ones are forgotten as new ones come.
const KEPT_PER_ENDPOINT: i64 = 1000;

#[derive(Clone, Debug, PartialEq)]
pub struct OperationRow {
    pub id: String,
    pub endpoint: String,
    pub branch: String,
    pub action: String,
    pub created_at: OffsetDateTime,
    pub duration_ms: i32,
}

const COLUMNS: &str = "id::text, endpoint_id, branch_id, action, created_at, duration_ms";

fn operation(row: &Row) -> Result<OperationRow, StoreError> {
    Ok(OperationRow {
        id: row.try_get(0)?,
        endpoint: row.try_get(1)?,
        branch: row.try_get(2)?,
        action: row.try_get(3)?,
        created_at: row.try_get(4)?,
        duration_ms: row.try_get(5)?,
    })
}

impl Store {
    /// Records a finished operation (and forgets the endpoint's oldest beyond the kept number).
    pub async fn record_operation(
        &self,
        endpoint: &str,
        branch: &str,
        action: &str,
        duration_ms: i32,
    ) -> Result<OperationRow, StoreError> {
        let id = uuid::Uuid::new_v4().to_string();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let sql = format!(
            "INSERT INTO api_operations (id, endpoint_id, branch_id, action, duration_ms)
             VALUES ($1::text::uuid, $2, $3, $4, $5) RETURNING {COLUMNS}"
        );
        let row = tx
            .query_one(&sql, &[&id, &endpoint, &branch, &action, &duration_ms])
            .await
            .map_err(StoreError::from_db)?;
        tx.execute(
            "DELETE FROM api_operations WHERE endpoint_id = $1 AND id IN (
                 SELECT id FROM api_operations WHERE endpoint_id = $1
                 ORDER BY created_at DESC, id OFFSET $2)",
            &[&endpoint, &KEPT_PER_ENDPOINT],
        )
        .await?;
        tx.commit().await?;
        operation(&row)
    }

    /// The endpoint's operations, newest first.
    pub async fn operations(&self, endpoint: &str) -> Result<Vec<OperationRow>, StoreError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM api_operations WHERE endpoint_id = $1
             ORDER BY created_at DESC, id"
        );
        client
            .query(&sql, &[&endpoint])
            .await?
            .iter()
            .map(operation)
            .collect()
    }

    /// One operation; `None` for an id that is not a UUID or not the endpoint's.
    pub async fn operation(
        &self,
        endpoint: &str,
        id: &str,
    ) -> Result<Option<OperationRow>, StoreError> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Ok(None);
        }
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM api_operations WHERE endpoint_id = $1 AND id = $2::text::uuid"
        );
        client
            .query_opt(&sql, &[&endpoint, &id])
            .await?
            .as_ref()
            .map(operation)
            .transpose()
    }
}
