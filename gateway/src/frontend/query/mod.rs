//! Runs the statements of one SQL-over-HTTP request on a backend connection.
//!
//! Each statement goes out in one round trip with the extended protocol: Parse (unnamed, no
//! parameter types, so Postgres infers them exactly as for node-postgres), Bind (all parameters
//! and results in text format), Describe portal, Execute, Sync. One statement per query follows
//! from Parse. Batches run inside `START TRANSACTION … / COMMIT`.
//!
//! Errors from Postgres come back only after the ReadyForQuery that ends the statement, so the
//! connection is in sync; every other error leaves a request in flight. A FATAL has no
//! ReadyForQuery after it (the server closes the connection): it is returned as it is.

pub mod json;
pub mod types;

use bytes::BufMut;
use postgres_protocol::message::backend::{DataRowBody, Message};
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;

use crate::base::error::{ErrorKind, ReportableError};
use crate::compute::{Backend, BackendError, DbError};

/// One statement as it arrived: SQL text, text parameters (`None` is SQL NULL), and an
/// optional per-query array mode overriding the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub query: String,
    pub params: Vec<Option<String>>,
    pub array_mode: Option<bool>,
}

/// A column of a result, as RowDescription describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub table_oid: u32,
    pub column_id: i16,
    pub type_oid: u32,
    pub type_size: i16,
    pub type_modifier: i32,
}

/// The outcome of one statement: columns, raw text rows, and the command tag.
#[derive(Debug, Default)]
pub struct StatementResult {
    pub fields: Vec<Field>,
    pub rows: Vec<DataRowBody>,
    pub tag: Option<String>,
}

/// The transaction a batch runs in, from the `Neon-Batch-*` headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxnOptions {
    pub isolation: Option<IsolationLevel>,
    pub read_only: bool,
    pub deferrable: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsolationLevel {
    ReadUncommitted,
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

impl IsolationLevel {
    /// Parses the header value: the exact, case-sensitive names the driver sends.
    pub fn from_header(value: &[u8]) -> Option<Self> {
        match value {
            b"ReadUncommitted" => Some(IsolationLevel::ReadUncommitted),
            b"ReadCommitted" => Some(IsolationLevel::ReadCommitted),
            b"RepeatableRead" => Some(IsolationLevel::RepeatableRead),
            b"Serializable" => Some(IsolationLevel::Serializable),
            _ => None,
        }
    }

    pub fn header_value(self) -> &'static str {
        match self {
            IsolationLevel::ReadUncommitted => "ReadUncommitted",
            IsolationLevel::ReadCommitted => "ReadCommitted",
            IsolationLevel::RepeatableRead => "RepeatableRead",
            IsolationLevel::Serializable => "Serializable",
        }
    }

    fn sql(self) -> &'static str {
        match self {
            IsolationLevel::ReadUncommitted => "READ UNCOMMITTED",
            IsolationLevel::ReadCommitted => "READ COMMITTED",
            IsolationLevel::RepeatableRead => "REPEATABLE READ",
            IsolationLevel::Serializable => "SERIALIZABLE",
        }
    }
}

impl TxnOptions {
    /// `START TRANSACTION` with its clauses, e.g. `START TRANSACTION ISOLATION LEVEL
    /// SERIALIZABLE, READ ONLY, DEFERRABLE`.
    pub fn begin_statement(&self) -> String {
        let mut clauses = Vec::new();
        if let Some(level) = self.isolation {
            clauses.push(format!("ISOLATION LEVEL {}", level.sql()));
        }
        if self.read_only {
            clauses.push("READ ONLY".to_owned());
        }
        if self.deferrable {
            clauses.push("DEFERRABLE".to_owned());
        }
        if clauses.is_empty() {
            "START TRANSACTION".to_owned()
        } else {
            format!("START TRANSACTION {}", clauses.join(", "))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("response is too large (max is {max} bytes)")]
    ResponseTooLarge { max: usize },
    #[error("response has too many rows (max is {max})")]
    TooManyRows { max: usize },
    #[error("{0}")]
    Invalid(&'static str),
}

impl ReportableError for QueryError {
    fn kind(&self) -> ErrorKind {
        match self {
            QueryError::Backend(e) => e.kind(),
            QueryError::ResponseTooLarge { .. }
            | QueryError::TooManyRows { .. }
            | QueryError::Invalid(_) => ErrorKind::User,
        }
    }
}

impl From<DbError> for QueryError {
    fn from(error: DbError) -> Self {
        QueryError::Backend(error.into())
    }
}

/// How many more bytes of row data a request may return.
/// What a response may still hold: bytes (each row's data plus [`ROW_OVERHEAD`], so rows
/// with no or tiny columns cost what they take in memory) and rows. Spent as rows arrive, so a
/// response over either limit fails before memory grows past it.
#[derive(Debug)]
pub struct ResponseBudget {
    max: usize,
    left: usize,
    max_rows: usize,
    rows: usize,
}

/// What a row costs beyond its data: the handle kept for it until the response is written.
pub const ROW_OVERHEAD: usize = std::mem::size_of::<DataRowBody>();

impl ResponseBudget {
    pub fn new(max: usize, max_rows: usize) -> Self {
        ResponseBudget {
            max,
            left: max,
            max_rows,
            rows: 0,
        }
    }

    fn spend_row(&mut self, data: usize) -> Result<(), QueryError> {
        self.rows += 1;
        if self.rows > self.max_rows {
            return Err(QueryError::TooManyRows { max: self.max_rows });
        }
        self.spend(data.saturating_add(ROW_OVERHEAD))
    }

    /// A backend message too large to buffer is a response too large to send.
    fn oversized(&self, error: BackendError) -> QueryError {
        match error {
            BackendError::MessageTooLarge { .. } => QueryError::ResponseTooLarge { max: self.max },
            other => other.into(),
        }
    }

    fn spend(&mut self, bytes: usize) -> Result<(), QueryError> {
        self.left = self
            .left
            .checked_sub(bytes)
            .ok_or(QueryError::ResponseTooLarge { max: self.max })?;
        Ok(())
    }
}

/// Runs one statement in Postgres's implicit transaction (or the batch's explicit one).
/// `sent` counts it once it was written to the backend (metering counts statements sent,
/// whether or not they succeed).
pub async fn execute(
    backend: &mut Backend,
    statement: &Statement,
    budget: &mut ResponseBudget,
    sent: &mut u64,
) -> Result<StatementResult, QueryError> {
    if statement.query.contains('\0') {
        return Err(QueryError::Invalid("query must not contain a NUL byte"));
    }
    if statement.params.len() > usize::from(u16::MAX) {
        return Err(QueryError::Invalid("too many parameters (max is 65535)"));
    }
    let buf = backend.write_buf();
    frontend::parse("", &statement.query, [], buf).map_err(BackendError::Io)?;
    frontend::bind(
        "",
        "",
        [],
        &statement.params,
        |param, buf| match param {
            Some(text) => {
                buf.put_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        },
        [],
        buf,
    )
    .map_err(|_| QueryError::Invalid("could not encode parameters"))?;
    frontend::describe(b'P', "", buf).map_err(BackendError::Io)?;
    frontend::execute("", 0, buf).map_err(BackendError::Io)?;
    frontend::sync(buf);
    backend.flush().await?;
    *sent += 1;

    let mut result = StatementResult::default();
    let mut error: Option<DbError> = None;
    loop {
        let message = match backend.next_message().await {
            Ok(message) => message,
            // A FATAL is followed by the server closing the connection: report the FATAL.
            Err(e) => {
                return Err(match error {
                    Some(fatal) if fatal.is_fatal() => fatal.into(),
                    _ => budget.oversized(e),
                })
            }
        };
        match message {
            Message::ParseComplete
            | Message::BindComplete
            | Message::NoData
            | Message::EmptyQueryResponse
            | Message::PortalSuspended => {}
            Message::RowDescription(body) => result.fields = types::fields(&body)?,
            Message::DataRow(row) => {
                budget.spend_row(row.buffer().len())?;
                result.rows.push(row);
            }
            Message::CommandComplete(body) => {
                result.tag = Some(body.tag().map_err(BackendError::Io)?.to_owned())
            }
            Message::ErrorResponse(body) => {
                error = Some(DbError::parse(&body).map_err(BackendError::Io)?)
            }
            Message::ReadyForQuery(_) => break,
            Message::CopyInResponse(_) | Message::CopyOutResponse(_) => {
                return Err(QueryError::Invalid("COPY is not supported over HTTP"))
            }
            other => return Err(BackendError::unexpected(&other).into()),
        }
    }
    match error {
        Some(error) => Err(error.into()),
        None => Ok(result),
    }
}

/// Runs a batch as one transaction. The first error ends it: the caller discards the
/// connection, which rolls the transaction back. `sent` counts the statements written to the
/// backend (not the transaction's own `START TRANSACTION` and `COMMIT`).
pub async fn execute_batch(
    backend: &mut Backend,
    statements: &[Statement],
    txn: &TxnOptions,
    budget: &mut ResponseBudget,
    sent: &mut u64,
) -> Result<Vec<StatementResult>, QueryError> {
    backend.simple_query(&txn.begin_statement()).await?;
    let mut results = Vec::with_capacity(statements.len());
    for statement in statements {
        results.push(execute(backend, statement, budget, sent).await?);
    }
    backend.simple_query("COMMIT").await?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_statements() {
        let check = |txn: TxnOptions, expected: &str| assert_eq!(txn.begin_statement(), expected);
        check(TxnOptions::default(), "START TRANSACTION");
        check(
            TxnOptions {
                read_only: true,
                ..Default::default()
            },
            "START TRANSACTION READ ONLY",
        );
        check(
            TxnOptions {
                isolation: Some(IsolationLevel::Serializable),
                read_only: true,
                deferrable: true,
            },
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
        );
        check(
            TxnOptions {
                deferrable: true,
                ..Default::default()
            },
            "START TRANSACTION DEFERRABLE",
        );
    }

    #[test]
    fn isolation_header_is_exact() {
        assert_eq!(
            IsolationLevel::from_header(b"RepeatableRead"),
            Some(IsolationLevel::RepeatableRead)
        );
        assert_eq!(IsolationLevel::from_header(b"repeatableread"), None);
        assert_eq!(IsolationLevel::from_header(b"Serializable "), None);
    }

    #[test]
    fn budget() {
        let mut budget = ResponseBudget::new(10, 100);
        assert!(budget.spend(6).is_ok());
        assert!(budget.spend(4).is_ok());
        assert!(matches!(
            budget.spend(1),
            Err(QueryError::ResponseTooLarge { max: 10 })
        ));
        // A row with no columns still costs its handle.
        let mut budget = ResponseBudget::new(10 * ROW_OVERHEAD, 100);
        for _ in 0..10 {
            assert!(budget.spend_row(0).is_ok());
        }
        assert!(matches!(
            budget.spend_row(0),
            Err(QueryError::ResponseTooLarge { .. })
        ));
        let mut budget = ResponseBudget::new(usize::MAX, 3);
        for _ in 0..3 {
            assert!(budget.spend_row(0).is_ok());
        }
        assert!(matches!(
            budget.spend_row(0),
            Err(QueryError::TooManyRows { max: 3 })
        ));
    }
}
