//! Branches in the store: one row per branch next to its database's row, the operation in
//! progress on it (written before the operation starts), its labels and its expiry.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use tokio_postgres::Row;

use super::{Store, StoreError};

/// The operation in progress on a branch; `Ready` when none is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BranchState {
    Creating,
    Ready,
    Resetting,
    Deleting,
}

impl BranchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BranchState::Creating => "creating",
            BranchState::Ready => "ready",
            BranchState::Resetting => "resetting",
            BranchState::Deleting => "deleting",
        }
    }

    fn parse(s: &str) -> Result<BranchState, StoreError> {
        Ok(match s {
            "creating" => BranchState::Creating,
            "ready" => BranchState::Ready,
            "resetting" => BranchState::Resetting,
            "deleting" => BranchState::Deleting,
            other => return Err(StoreError::Build(format!("unknown branch state '{other}'"))),
        })
    }
}

/// A branch as the store records it.
#[derive(Clone, Debug, PartialEq)]
pub struct BranchRow {
    pub endpoint: String,
    pub name: String,
    pub source: String,
    pub owner: String,
    pub data: bool,
    pub labels: BTreeMap<String, String>,
    pub state: BranchState,
    pub created_at: OffsetDateTime,
    pub copied_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub display_name: Option<String>,
}

/// What [`Store::insert_branch`] writes.
#[derive(Clone, Debug)]
pub struct NewBranch<'a> {
    pub endpoint: &'a str,
    pub name: &'a str,
    pub source: &'a str,
    pub owner: &'a str,
    pub data: bool,
    pub labels: &'a BTreeMap<String, String>,
    pub ttl_seconds: Option<i64>,
    pub display_name: Option<&'a str>,
}

const COLUMNS: &str = "b.endpoint_id, b.name, b.source, d.owner, b.data, b.labels, b.state, \
                       b.created_at, b.copied_at, b.expires_at, b.display_name";

fn branch(row: &Row) -> Result<BranchRow, StoreError> {
    let labels: serde_json::Value = row.try_get(5)?;
    let labels = serde_json::from_value(labels)
        .map_err(|e| StoreError::Build(format!("branch labels: {e}")))?;
    Ok(BranchRow {
        endpoint: row.try_get(0)?,
        name: row.try_get(1)?,
        source: row.try_get(2)?,
        owner: row.try_get(3)?,
        data: row.try_get(4)?,
        labels,
        state: BranchState::parse(row.try_get(6)?)?,
        created_at: row.try_get(7)?,
        copied_at: row.try_get(8)?,
        expires_at: row.try_get(9)?,
        display_name: row.try_get(10)?,
    })
}

impl Store {
    /// Records a branch about to be created (`creating`), with its database's row, in one
    /// transaction. [`StoreError::Conflict`] when a database of that name is recorded.
    pub async fn insert_branch(&self, new: &NewBranch<'_>) -> Result<BranchRow, StoreError> {
        let labels = serde_json::to_value(new.labels)
            .map_err(|e| StoreError::Build(format!("branch labels: {e}")))?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO databases (endpoint_id, name, owner) VALUES ($1, $2, $3)",
            &[&new.endpoint, &new.name, &new.owner],
        )
        .await
        .map_err(StoreError::from_db)?;
        tx.execute(
            "INSERT INTO branches (endpoint_id, name, source, data, labels, state, expires_at,
                                   display_name)
             VALUES ($1, $2, $3, $4, $5, 'creating',
                     now() + make_interval(secs => $6::int8::float8), $7)",
            &[
                &new.endpoint,
                &new.name,
                &new.source,
                &new.data,
                &labels,
                &new.ttl_seconds,
                &new.display_name,
            ],
        )
        .await
        .map_err(StoreError::from_db)?;
        tx.commit().await?;
        self.branch(new.endpoint, new.name)
            .await?
            .ok_or_else(|| StoreError::Build("a branch vanished after its insert".into()))
    }

    pub async fn branch(
        &self,
        endpoint: &str,
        name: &str,
    ) -> Result<Option<BranchRow>, StoreError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM branches b
             JOIN databases d USING (endpoint_id, name)
             WHERE b.endpoint_id = $1 AND b.name = $2"
        );
        client
            .query_opt(&sql, &[&endpoint, &name])
            .await?
            .as_ref()
            .map(branch)
            .transpose()
    }

    /// The endpoint's branches, oldest first; only those with label `key` = `value` when
    /// given.
    pub async fn branches(
        &self,
        endpoint: &str,
        label: Option<(&str, &str)>,
    ) -> Result<Vec<BranchRow>, StoreError> {
        let client = self.pool.get().await?;
        let filter = label.map(|(k, v)| {
            let mut one = serde_json::Map::new();
            one.insert(k.to_owned(), serde_json::Value::String(v.to_owned()));
            serde_json::Value::Object(one)
        });
        let sql = format!(
            "SELECT {COLUMNS} FROM branches b
             JOIN databases d USING (endpoint_id, name)
             WHERE b.endpoint_id = $1 AND ($2::jsonb IS NULL OR b.labels @> $2::jsonb)
             ORDER BY b.created_at, b.name"
        );
        client
            .query(&sql, &[&endpoint, &filter])
            .await?
            .iter()
            .map(branch)
            .collect()
    }

    pub async fn branch_count(&self, endpoint: &str) -> Result<i64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_one(
                "SELECT count(*) FROM branches WHERE endpoint_id = $1",
                &[&endpoint],
            )
            .await?
            .try_get(0)?)
    }

    /// Marks the operation in progress on a branch (or none: `Ready`); a `Ready` after a
    /// copy also moves `copied_at` to now.
    pub async fn set_branch_state(
        &self,
        endpoint: &str,
        name: &str,
        state: BranchState,
        copied: bool,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE branches SET state = $3,
                        copied_at = CASE WHEN $4 THEN now() ELSE copied_at END
                 WHERE endpoint_id = $1 AND name = $2",
                &[&endpoint, &name, &state.as_str(), &copied],
            )
            .await?;
        Ok(())
    }

    /// Forgets a branch and its database (once the database is dropped).
    pub async fn delete_branch(&self, endpoint: &str, name: &str) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "DELETE FROM databases d USING branches b
                 WHERE d.endpoint_id = $1 AND d.name = $2
                   AND b.endpoint_id = d.endpoint_id AND b.name = d.name",
                &[&endpoint, &name],
            )
            .await?;
        Ok(())
    }

    /// Active endpoints with a branch past its expiry or left in an operation: the expiry
    /// loop's work. Suspended endpoints are not listed (nothing wakes one to delete).
    pub async fn endpoints_with_branch_work(&self) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await?;
        client
            .query(
                "SELECT DISTINCT b.endpoint_id FROM branches b
                 JOIN endpoints e ON e.id = b.endpoint_id
                 WHERE e.state = 'active' AND e.operation IS NULL
                   AND (b.state <> 'ready' OR b.expires_at <= now())
                 ORDER BY 1",
                &[],
            )
            .await?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
    }
}
