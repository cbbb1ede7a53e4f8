//! Branches: throwaway copies of a database on the same endpoint, for test suites.
//!
//! A branch is a database made with `CREATE DATABASE <branch> TEMPLATE <source>`: Postgres
//! copies the source's files, so a small database is ready in tens of milliseconds, and the
//! copy is reached like any database of the endpoint (HTTP, WebSocket, TCP, pooled). The
//! source must have no other session during the copy, so the copy first ends the source's
//! idle sessions (the gateway's and PgBouncer's pooled connections among them; a client's
//! idle session gets `57P01` at its next statement). A session in a transaction or running a
//! query is waited for (Postgres's 5 s, twice), and then the branch is refused (409) with
//! nothing created.
//!
//! Every operation is written to the store before it starts (`creating`, `resetting`,
//! `deleting`) and runs under the endpoint's lock, so a branch found in one of those states
//! under the lock was left so by a crash: [`Computes::tidy_branches`] settles a reset (its
//! scratch copy renamed into place if it had replaced the branch, else dropped) and removes
//! the other two. It also deletes expired branches; it runs for active endpoints
//! only (the expiry loop never wakes one), so a suspended endpoint's expired branches go
//! once something else wakes it.

use tokio_postgres::error::SqlState;
use wake_api::admin::{
    Branch, ConnectionUris, CreateBranch, MAX_BRANCH_LABELS, MAX_BRANCH_TTL_SECONDS,
    MAX_LABEL_VALUE_BYTES,
};
use wake_api::names;

use super::{compute_error, invalid_name, Computes, LifecycleError};
use crate::compute::ComputeDriver;
use crate::roles::quote_ident;
use crate::store::{BranchRow, BranchState, EndpointRow, NewBranch, StoreError};

/// How the gateway is reached from outside, for the connection strings of branches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicAddress {
    /// Endpoints are `<id>.<domain>` (and `<id>-pooler.<domain>`).
    pub domain: String,
    pub port: u16,
    /// The `sslmode` connection strings carry (`disable`, `require`, `verify-full`, …).
    pub sslmode: String,
}

/// Settings for branches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchSettings {
    /// The most branches one endpoint may have.
    pub max_per_endpoint: u32,
    pub public: PublicAddress,
}

/// Ends the source's idle client sessions (never this one, never a session in a
/// transaction), so that `CREATE DATABASE … TEMPLATE` finds it unused; their process ids.
/// The sessions are chosen in a materialized step first: in one WHERE clause the planner may
/// call `pg_terminate_backend` before the other conditions, on any session.
const END_IDLE_SESSIONS: &str = "WITH idle AS MATERIALIZED (
       SELECT pid FROM pg_stat_activity
       WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'
         AND state = 'idle')
     SELECT COALESCE(array_agg(pid) FILTER (WHERE pg_terminate_backend(pid)), '{}') FROM idle";

/// Ends every client session of a database about to be dropped (never this one); their
/// process ids. Chosen in a materialized step first, as in [`END_IDLE_SESSIONS`].
const END_SESSIONS: &str = "WITH doomed AS MATERIALIZED (
       SELECT pid FROM pg_stat_activity
       WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend')
     SELECT COALESCE(array_agg(pid) FILTER (WHERE pg_terminate_backend(pid)), '{}') FROM doomed";

/// How many of those processes are still there.
const STILL_THERE: &str = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)";

/// How long the copy waits for ended sessions' processes to exit (Postgres itself would
/// wait for them too, but in steps of 100 ms).
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How many sessions still use a database.
const SESSIONS: &str = "SELECT count(*) FROM pg_stat_activity
     WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'";

/// For a schema-only branch: every table of the copy that a tenant role owns is emptied, with
/// its identity sequences restarted, and every other sequence a tenant role owns restarted.
/// Tables of the platform's own (owned by the superuser, like the JWT key) are kept. This runs
/// as the compute's superuser, so no code of the tenant's may run: their triggers on those
/// tables (a TRUNCATE trigger, even one enabled ALWAYS) are disabled around the TRUNCATE and
/// then set back exactly as they were, all in this one transaction. TRUNCATE fires no rule, no
/// foreign-key check and no event trigger a tenant can make.
const EMPTY_TENANT_TABLES: &str = "DO $$
DECLARE
  tables text;
  s record;
  t record;
BEGIN
  CREATE TEMPORARY TABLE tenant_tables ON COMMIT DROP AS
    SELECT c.oid AS rel, format('%I.%I', n.nspname, c.relname) AS name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%';
  CREATE TEMPORARY TABLE tenant_triggers ON COMMIT DROP AS
    SELECT tt.name AS tbl, tg.tgname AS trigger, tg.tgenabled AS enabled
    FROM pg_trigger tg JOIN tenant_tables tt ON tt.rel = tg.tgrelid WHERE NOT tg.tgisinternal;
  FOR t IN SELECT * FROM tenant_triggers LOOP
    EXECUTE format('ALTER TABLE %s DISABLE TRIGGER %I', t.tbl, t.trigger);
  END LOOP;
  SELECT string_agg(name, ', ') INTO tables FROM tenant_tables;
  IF tables IS NOT NULL THEN
    EXECUTE 'TRUNCATE ' || tables || ' RESTART IDENTITY CASCADE';
  END IF;
  FOR t IN SELECT * FROM tenant_triggers LOOP
    EXECUTE format('ALTER TABLE %s %s TRIGGER %I', t.tbl,
      CASE t.enabled WHEN 'O' THEN 'ENABLE' WHEN 'A' THEN 'ENABLE ALWAYS'
                     WHEN 'R' THEN 'ENABLE REPLICA' ELSE 'DISABLE' END,
      t.trigger);
  END LOOP;
  FOR s IN SELECT format('%I.%I', n.nspname, c.relname) AS seq
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind = 'S' AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
  LOOP
    EXECUTE 'ALTER SEQUENCE ' || s.seq || ' RESTART';
  END LOOP;
END $$";

impl Computes {
    /// Creates a branch of database `request.from` (waking the endpoint if it is suspended).
    pub async fn create_branch(
        &self,
        id: &str,
        request: &CreateBranch,
    ) -> Result<Branch, LifecycleError> {
        let name = match &request.name {
            Some(name) => name.clone(),
            None => generated_name(),
        };
        check_request(&name, request)?;
        let (_guard, row) = self.lock_running(id).await?;
        let owner = self.source_owner(id, &request.from).await?;
        let max = self.config.branches.max_per_endpoint;
        if self.store.branch_count(id).await? >= i64::from(max) {
            return Err(LifecycleError::Conflict(format!(
                "endpoint '{id}' has {max} branches, the most it may have; delete some first"
            )));
        }
        let new = NewBranch {
            endpoint: id,
            name: &name,
            source: &request.from,
            owner: &owner,
            data: request.data,
            labels: &request.labels,
            ttl_seconds: request.ttl_seconds,
            display_name: request.display_name.as_deref(),
        };
        let branch = match self.store.insert_branch(&new).await {
            Err(StoreError::Conflict) => {
                return Err(LifecycleError::Conflict(format!(
                    "endpoint '{id}' already has a database named '{name}'"
                )))
            }
            other => other?,
        };
        let started = std::time::Instant::now();
        if let Err(e) = self.copy(&row, &branch, &name).await {
            // Nothing half-created. A refusal (a busy source, a database of that name the
            // API did not make) created nothing, and what has the name is not ours to drop:
            // only the rows go. After any other failure the copy's database goes too.
            if matches!(e, LifecycleError::Conflict(_)) {
                self.store.delete_branch(id, &name).await.ok();
            } else {
                self.remove_branch(&row, &name).await.ok();
            }
            return Err(e);
        }
        self.store
            .set_branch_state(id, &name, BranchState::Ready, true)
            .await?;
        self.metrics
            .branches
            .copy_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.branches.count("create");
        self.render_branch(self.branch_row(id, &name).await?)
    }

    /// The endpoint's branches, oldest first (those with label `key=value` when given).
    pub async fn branches(
        &self,
        id: &str,
        label: Option<(&str, &str)>,
    ) -> Result<Vec<Branch>, LifecycleError> {
        self.row(id).await?;
        let rows = self.store.branches(id, label).await?;
        // One being created or deleted (now, or cut by a crash) is not there yet, or not any more.
        rows.into_iter()
            .filter(|b| matches!(b.state, BranchState::Ready | BranchState::Resetting))
            .map(|b| self.render_branch(b))
            .collect()
    }

    pub async fn branch(&self, id: &str, name: &str) -> Result<Branch, LifecycleError> {
        self.row(id).await?;
        let branch = self.branch_row(id, name).await?;
        if !matches!(branch.state, BranchState::Ready | BranchState::Resetting) {
            return Err(LifecycleError::BranchNotFound {
                endpoint: id.to_owned(),
                branch: name.to_owned(),
            });
        }
        self.render_branch(branch)
    }

    /// Deletes a branch: its database is dropped, ending its sessions (`57P01`).
    pub async fn delete_branch(&self, id: &str, name: &str) -> Result<(), LifecycleError> {
        let (_guard, row) = self.lock_running(id).await?;
        self.branch_row(id, name).await?;
        self.remove_branch(&row, name).await?;
        self.metrics.branches.count("delete");
        Ok(())
    }

    /// Deletes every branch with label `key=value`; their names.
    pub async fn delete_branches_labelled(
        &self,
        id: &str,
        label: (&str, &str),
    ) -> Result<Vec<String>, LifecycleError> {
        check_label(label.0, label.1)?;
        let (_guard, row) = self.lock_running(id).await?;
        let mut deleted = Vec::new();
        for branch in self.store.branches(id, Some(label)).await? {
            self.remove_branch(&row, &branch.name).await?;
            self.metrics.branches.count("delete");
            deleted.push(branch.name);
        }
        Ok(deleted)
    }

    /// Copies the branch again from its source's current state, keeping its name, labels and
    /// expiry. Its open sessions end (`57P01`).
    pub async fn reset_branch(&self, id: &str, name: &str) -> Result<Branch, LifecycleError> {
        let (_guard, row) = self.lock_running(id).await?;
        let branch = self.branch_row(id, name).await?;
        self.source_owner(id, &branch.source).await?;
        self.reset_locked(&row, &branch).await?;
        self.metrics.branches.count("reset");
        self.render_branch(self.branch_row(id, name).await?)
    }

    /// Deletes the endpoint's expired branches and settles what a crash left (a reset, a
    /// create or delete removed), if the endpoint runs and no other operation
    /// holds it (then the next round tries again). Never wakes it. The number of branches
    /// deleted.
    pub async fn tidy_branches(&self, id: &str) -> Result<usize, LifecycleError> {
        let Some(_guard) = self.try_lock(id).await else {
            return Ok(0);
        };
        let row = self.row(id).await?;
        if !self.is_running(&row).await {
            return Ok(0);
        }
        let now = time::OffsetDateTime::now_utc();
        let mut deleted = 0;
        for branch in self.store.branches(id, None).await? {
            let expired = branch.expires_at.is_some_and(|at| at <= now);
            match branch.state {
                BranchState::Resetting => self.settle_reset(&row, &branch.name).await?,
                BranchState::Creating | BranchState::Deleting => {
                    self.remove_branch(&row, &branch.name).await?;
                    deleted += 1;
                }
                BranchState::Ready if expired => {
                    self.remove_branch(&row, &branch.name).await?;
                    self.metrics.branches.count("expire");
                    tracing::info!(endpoint = id, branch = %branch.name, "branch expired: deleted");
                    deleted += 1;
                }
                BranchState::Ready => {}
            }
        }
        Ok(deleted)
    }

    /// A reset copies the source into a scratch database first, and only then replaces the
    /// branch with it (drop, rename): a reset refused for a busy source, or cut by a crash
    /// before the drop, leaves the branch as it was.
    async fn reset_locked(
        &self,
        row: &EndpointRow,
        branch: &BranchRow,
    ) -> Result<(), LifecycleError> {
        let id = row.id.as_str();
        let scratch = scratch_name(&branch.name);
        let compute = compute_error(id);
        let admin = self.driver.admin(&Self::spec(row)).await.map_err(compute)?;
        drop_database(&admin, &scratch)
            .await
            .map_err(|e| compute(e.into()))?;
        self.store
            .set_branch_state(id, &branch.name, BranchState::Resetting, false)
            .await?;
        if let Err(e) = self.copy(row, branch, &scratch).await {
            drop_database(&admin, &scratch).await.ok();
            self.store
                .set_branch_state(id, &branch.name, BranchState::Ready, false)
                .await?;
            return Err(e);
        }
        drop_database(&admin, &branch.name)
            .await
            .map_err(|e| compute(e.into()))?;
        rename_database(&admin, &scratch, &branch.name)
            .await
            .map_err(|e| compute(e.into()))?;
        self.store
            .set_branch_state(id, &branch.name, BranchState::Ready, true)
            .await?;
        Ok(())
    }

    /// After a crash in the middle of a reset: a scratch copy that already replaced the
    /// dropped branch is renamed into place; otherwise it goes and the branch stays as it was.
    async fn settle_reset(&self, row: &EndpointRow, name: &str) -> Result<(), LifecycleError> {
        let id = row.id.as_str();
        let scratch = scratch_name(name);
        let compute = compute_error(id);
        let admin = self.driver.admin(&Self::spec(row)).await.map_err(compute)?;
        let pg = |e: tokio_postgres::Error| compute(e.into());
        let has = |rows: &[tokio_postgres::Row], db: &str| {
            rows.iter()
                .any(|r| r.try_get::<_, String>(0).is_ok_and(|n| n == db))
        };
        let databases = admin
            .query(
                "SELECT datname FROM pg_database WHERE datname IN ($1, $2)",
                &[&name, &scratch.as_str()],
            )
            .await
            .map_err(pg)?;
        let copied = has(&databases, &scratch) && !has(&databases, name);
        if copied {
            rename_database(&admin, &scratch, name).await.map_err(pg)?;
        } else {
            drop_database(&admin, &scratch).await.map_err(pg)?;
        }
        self.store
            .set_branch_state(id, name, BranchState::Ready, copied)
            .await?;
        Ok(())
    }

    /// The copy itself, into database `target`: `CREATE DATABASE … TEMPLATE`, then (schema
    /// only) the tables emptied.
    async fn copy(
        &self,
        row: &EndpointRow,
        branch: &BranchRow,
        target: &str,
    ) -> Result<(), LifecycleError> {
        let id = row.id.as_str();
        let compute = compute_error(id);
        let spec = Self::spec(row);
        let admin = self.driver.admin(&spec).await.map_err(compute)?;
        let create = format!(
            "CREATE DATABASE {} TEMPLATE {} OWNER {}",
            quote_ident(target),
            quote_ident(&branch.source),
            quote_ident(&branch.owner)
        );
        // Twice: a session may connect to the source between the two statements.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ended: Vec<i32> = admin
                .query_one(END_IDLE_SESSIONS, &[&branch.source])
                .await
                .and_then(|r| r.try_get(0))
                .map_err(|e| compute(e.into()))?;
            wait_for_exit(&admin, &ended)
                .await
                .map_err(|e| compute(e.into()))?;
            match admin.batch_execute(&create).await {
                Ok(()) => break,
                Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => {
                    return Err(LifecycleError::Conflict(format!(
                        "endpoint '{id}' has a database named '{target}' that the API did not make"
                    )));
                }
                Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) && attempt < 2 => {}
                Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {
                    let busy: i64 = admin
                        .query_one(SESSIONS, &[&branch.source])
                        .await
                        .and_then(|r| r.try_get(0))
                        .map_err(|e| compute(e.into()))?;
                    return Err(LifecycleError::Conflict(format!(
                        "database '{}' of endpoint '{id}' has {busy} session(s) in a transaction \
                         or running a query that did not end within 10 s; nothing was copied",
                        branch.source
                    )));
                }
                Err(e) => return Err(compute(e.into())),
            }
        }
        if !branch.data {
            let copy = self
                .driver
                .admin_database(&spec, target)
                .await
                .map_err(compute)?;
            copy.batch_execute(EMPTY_TENANT_TABLES)
                .await
                .map_err(|e| compute(e.into()))?;
        }
        Ok(())
    }

    /// Drops a branch's database (ending its sessions) and forgets it; `deleting` first.
    async fn remove_branch(&self, row: &EndpointRow, name: &str) -> Result<(), LifecycleError> {
        let id = row.id.as_str();
        self.store
            .set_branch_state(id, name, BranchState::Deleting, false)
            .await?;
        let compute = compute_error(id);
        let admin = self.driver.admin(&Self::spec(row)).await.map_err(compute)?;
        drop_database(&admin, name)
            .await
            .map_err(|e| compute(e.into()))?;
        self.store.delete_branch(id, name).await?;
        Ok(())
    }

    async fn branch_row(&self, id: &str, name: &str) -> Result<BranchRow, LifecycleError> {
        self.store
            .branch(id, name)
            .await?
            .ok_or_else(|| LifecycleError::BranchNotFound {
                endpoint: id.to_owned(),
                branch: name.to_owned(),
            })
    }

    /// The owner of database `source`, which must be one of the endpoint's (not `postgres`).
    async fn source_owner(&self, id: &str, source: &str) -> Result<String, LifecycleError> {
        let databases = self.store.databases(id).await?;
        databases
            .into_iter()
            .find(|d| d.name == source)
            .map(|d| d.owner)
            .ok_or_else(|| LifecycleError::DatabaseNotFound {
                endpoint: id.to_owned(),
                database: source.to_owned(),
            })
    }

    fn render_branch(&self, b: BranchRow) -> Result<Branch, LifecycleError> {
        let connection_uris = connection_uris(&self.config.branches.public, &b);
        Ok(Branch {
            display_name: b.display_name.unwrap_or_else(|| b.name.clone()),
            name: b.name,
            endpoint: b.endpoint,
            source: b.source,
            owner: b.owner,
            data: b.data,
            labels: b.labels,
            created_at: b.created_at,
            copied_at: b.copied_at,
            expires_at: b.expires_at,
            connection_uris,
        })
    }
}

/// Until none of `pids` runs any more, polling every 5 ms, for at most [`EXIT_WAIT`].
async fn wait_for_exit(
    admin: &tokio_postgres::Client,
    pids: &[i32],
) -> Result<(), tokio_postgres::Error> {
    let deadline = tokio::time::Instant::now() + EXIT_WAIT;
    while !pids.is_empty() && tokio::time::Instant::now() < deadline {
        let left: i64 = admin.query_one(STILL_THERE, &[&pids]).await?.try_get(0)?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn rename_database(
    admin: &tokio_postgres::Client,
    from: &str,
    to: &str,
) -> Result<(), tokio_postgres::Error> {
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} RENAME TO {}",
            quote_ident(from),
            quote_ident(to)
        ))
        .await
}

/// The scratch database of a reset of branch `name`: `pg_reset_` and 16 hex digits of its
/// hash, a name no tenant can choose (the API refuses `pg_` names).
fn scratch_name(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("pg_reset_{hex}")
}

/// Drops database `name` if it exists, ending its sessions (`57P01`). They are ended and
/// waited for here first, polled every 5 ms: `DROP DATABASE … WITH (FORCE)` alone waits for
/// the processes it ended in steps of 100 ms, which every delete and reset of a branch the
/// gateway's pool had used paid. FORCE still ends a session that connects in between.
async fn drop_database(
    admin: &tokio_postgres::Client,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    let ended: Vec<i32> = admin.query_one(END_SESSIONS, &[&name]).await?.try_get(0)?;
    wait_for_exit(admin, &ended).await?;
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(name)
        ))
        .await
}

/// `br_` and 12 random hex digits.
fn generated_name() -> String {
    let n = rand::random::<u64>();
    format!("br_{:012x}", n & 0xffff_ffff_ffff)
}

/// The id Neon's API gives an endpoint's default branch; no branch may take it as its name.
pub const DEFAULT_BRANCH_ID: &str = "br-main-root-0";

/// The longest display name (Neon's limit for a branch's name).
const MAX_DISPLAY_NAME_CHARS: usize = 256;

fn check_request(name: &str, request: &CreateBranch) -> Result<(), LifecycleError> {
    if !names::valid_object_name(name) || name == "postgres" || name == DEFAULT_BRANCH_ID {
        return Err(invalid_name("branch", name));
    }
    if let Some(display) = &request.display_name {
        if !(1..=MAX_DISPLAY_NAME_CHARS).contains(&display.chars().count())
            || display.chars().any(char::is_control)
        {
            return Err(LifecycleError::Invalid(format!(
                "display_name must be 1 to {MAX_DISPLAY_NAME_CHARS} characters, none of them control characters"
            )));
        }
    }
    if let Some(ttl) = request.ttl_seconds {
        if !(1..=MAX_BRANCH_TTL_SECONDS).contains(&ttl) {
            return Err(LifecycleError::Invalid(format!(
                "ttl_seconds must be between 1 and {MAX_BRANCH_TTL_SECONDS} (30 days), not {ttl}"
            )));
        }
    }
    if request.labels.len() > MAX_BRANCH_LABELS {
        return Err(LifecycleError::Invalid(format!(
            "at most {MAX_BRANCH_LABELS} labels per branch"
        )));
    }
    for (key, value) in &request.labels {
        check_label(key, value)?;
    }
    Ok(())
}

/// Label keys are 1 to 63 of `[A-Za-z0-9_.-]`; values at most [`MAX_LABEL_VALUE_BYTES`].
pub fn check_label(key: &str, value: &str) -> Result<(), LifecycleError> {
    let key_ok = (1..=63).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !key_ok || value.len() > MAX_LABEL_VALUE_BYTES {
        return Err(LifecycleError::Invalid(format!(
            "a label is a key of 1 to 63 letters, digits, '_', '.' and '-', and a value of at \
             most {MAX_LABEL_VALUE_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The branch's connection strings through the gateway (no password).
fn connection_uris(public: &PublicAddress, b: &BranchRow) -> ConnectionUris {
    ConnectionUris {
        direct: connection_uri(public, &b.endpoint, false, &b.owner, None, &b.name),
        pooled: connection_uri(public, &b.endpoint, true, &b.owner, None, &b.name),
    }
}

/// `postgresql://<role>[:<password>]@<endpoint>[-pooler].<domain>[:<port>]/<database>?sslmode=…`:
/// a connection string through the gateway, as Neon's look.
pub fn connection_uri(
    public: &PublicAddress,
    endpoint: &str,
    pooled: bool,
    role: &str,
    password: Option<&str>,
    database: &str,
) -> String {
    let mut url = format!("postgresql://{}", percent(role));
    if let Some(password) = password {
        url.push(':');
        url.push_str(&percent(password));
    }
    url.push('@');
    url.push_str(&public.host(endpoint, pooled));
    url.push_str(&format!(
        "/{}?sslmode={}",
        percent(database),
        public.sslmode
    ));
    url
}

impl PublicAddress {
    /// `<endpoint>[-pooler].<domain>`, with `:<port>` unless it is 5432.
    pub fn host(&self, endpoint: &str, pooled: bool) -> String {
        let suffix = if pooled { "-pooler" } else { "" };
        let mut host = format!("{endpoint}{suffix}.{}", self.domain);
        if self.port != 5432 {
            host.push_str(&format!(":{}", self.port));
        }
        host
    }
}

/// Percent-encodes every byte but `[A-Za-z0-9_.-]`: what a URL's user, password or path may
/// not hold as is, and more (over-encoding is harmless). Names are `[A-Za-z0-9_-]` already;
/// passwords are anything.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn request() -> CreateBranch {
        CreateBranch {
            from: "main".into(),
            data: true,
            ..CreateBranch::default()
        }
    }

    #[test]
    fn generated_names_are_valid_and_differ() {
        let a = generated_name();
        assert!(names::valid_object_name(&a), "{a}");
        assert_eq!(a.len(), 15);
        assert_ne!(a, generated_name());
    }

    #[test]
    fn requests_are_checked() {
        assert!(check_request("br_1", &request()).is_ok());
        for bad in ["", "pg_x", "postgres", "a b", "1abc", &"x".repeat(64)] {
            assert!(check_request(bad, &request()).is_err(), "{bad:?}");
        }
        for ttl in [0, -1, MAX_BRANCH_TTL_SECONDS + 1] {
            let r = CreateBranch {
                ttl_seconds: Some(ttl),
                ..request()
            };
            assert!(check_request("b", &r).is_err(), "ttl {ttl}");
        }
        let r = CreateBranch {
            ttl_seconds: Some(MAX_BRANCH_TTL_SECONDS),
            ..request()
        };
        assert!(check_request("b", &r).is_ok());
        let many: BTreeMap<_, _> = (0..=MAX_BRANCH_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert!(check_request(
            "b",
            &CreateBranch {
                labels: many,
                ..request()
            }
        )
        .is_err());
        assert!(check_label("suite.run-1_x", "v").is_ok());
        assert!(check_label("", "v").is_err());
        assert!(check_label("a=b", "v").is_err());
        assert!(check_label("k", &"v".repeat(MAX_LABEL_VALUE_BYTES + 1)).is_err());
    }

    #[test]
    fn a_password_in_a_connection_uri_is_percent_encoded() {
        let public = PublicAddress {
            domain: "example.test".into(),
            port: 5432,
            sslmode: "require".into(),
        };
        let uri = connection_uri(&public, "db", true, "app", Some("p@ss:w/rd#1 ?%"), "main");
        assert_eq!(
            uri,
            "postgresql://app:p%40ss%3Aw%2Frd%231%20%3F%25@db-pooler.example.test/main?sslmode=require"
        );
    }

    #[test]
    fn connection_uris_look_like_neons() {
        let public = PublicAddress {
            domain: "localtest.me".into(),
            port: 4444,
            sslmode: "disable".into(),
        };
        let b = BranchRow {
            endpoint: "db".into(),
            name: "br_1".into(),
            source: "main".into(),
            owner: "postgres".into(),
            data: true,
            labels: BTreeMap::new(),
            state: BranchState::Ready,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            copied_at: time::OffsetDateTime::UNIX_EPOCH,
            expires_at: None,
            display_name: None,
        };
        let uris = connection_uris(&public, &b);
        assert_eq!(
            uris.direct,
            "postgresql://postgres@db.localtest.me:4444/br_1?sslmode=disable"
        );
        assert_eq!(
            uris.pooled,
            "postgresql://postgres@db-pooler.localtest.me:4444/br_1?sslmode=disable"
        );
        let standard = PublicAddress {
            port: 5432,
            sslmode: "require".into(),
            ..public
        };
        assert_eq!(
            connection_uris(&standard, &b).direct,
            "postgresql://postgres@db.localtest.me/br_1?sslmode=require"
        );
    }
}
