//! `POST /sql`: one statement or a batch transaction per request, the driver's headers, body
//! limits, and the JSON response. The life of a request:
//!
//! 1. headers → output mode and batch transaction options; `Neon-Connection-String` →
//!    [`ConnInfo`] (endpoint, database, role, password);
//! 2. a declared body length over the limit is a 413 at once;
//! 3. with a control plane, the password checked against the role's SCRAM secret before
//!    anything else (an unknown endpoint or role is checked against a mock secret: the same
//!    work and the same 400 as a wrong password; a control plane that cannot be asked, with no
//!    secret cached, is a 503), so an unauthenticated request wakes nothing, opens nothing and
//!    has none of its body read or parsed (it is discarded, within bounds, before the answer);
//!    on a static route Postgres judges the password. The request is admitted under its
//!    endpoint's limits ([`crate::base::limits::EndpointLimits`], 429 beyond; on a static route once
//!    Postgres accepted the password). The body is read up to the limit (413 beyond) within
//!    the body read timeout (408 beyond) and parsed into a [`Payload`]. Then the route is looked up (the
//!    endpoint woken if needed) and a connection taken from the pool, which reuses an idle one
//!    only for a verified password; from here on the request counts as in flight on its
//!    endpoint ([`crate::control_plane::activity`]);
//! 4. execution ([`crate::frontend::query`]); an error or a dropped request discards the connection,
//!    cancelling whatever still runs. A request that failed on a reused connection which the
//!    server had closed before the request reached it ([`crate::proxy::pool::Conn::never_ran`]) is
//!    run once more on a new connection; one that may have run is never repeated;
//! 5. JSON rendering within the response limit (507 beyond); the connection goes back to the pool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use std::fmt;

use serde::de;
use serde::Deserialize;

use super::AppState;
use crate::base::conn_info::{self, ConnInfo};
use crate::base::error::ReportableError;
use crate::base::limits::{EndpointSlot, Limit, Refused};
use crate::compute::ClaimsError;
use crate::control_plane::routes::Route;
use crate::frontend::http::error::SqlError;
use crate::frontend::query::json::{self, OutputMode};
use crate::frontend::query::types::TypeMap;
use crate::frontend::query::{
    self, IsolationLevel, QueryError, ResponseBudget, Statement, StatementResult, TxnOptions,
};
use crate::obs::labels::{RequestKind, RetryOperation};
use crate::obs::usage::{Direction, Traffic};
use crate::pgwire::scram::ScramKeys;
use crate::proxy::login::{Checked, JwtChecked, LoginError};
use crate::proxy::pool::{Conn, Reuse};

const CONNECTION_STRING: &str = "neon-connection-string";
const RAW_TEXT_OUTPUT: &str = "neon-raw-text-output";
const ARRAY_MODE: &str = "neon-array-mode";
const BATCH_ISOLATION_LEVEL: &str = "neon-batch-isolation-level";
const BATCH_READ_ONLY: &str = "neon-batch-read-only";
const BATCH_DEFERRABLE: &str = "neon-batch-deferrable";

/// What the request body asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload {
    Single(Statement),
    Batch(Vec<Statement>),
}

impl Payload {
    fn kind(&self) -> RequestKind {
        match self {
            Payload::Single(_) => RequestKind::Single,
            Payload::Batch(_) => RequestKind::Batch,
        }
    }
}

#[derive(Deserialize)]
struct RawQuery {
    query: String,
    #[serde(default)]
    params: Params,
    #[serde(rename = "arrayMode")]
    array_mode: Option<bool>,
}

#[derive(Deserialize)]
struct RawPayload {
    query: Option<String>,
    params: Option<Params>,
    #[serde(rename = "arrayMode")]
    array_mode: Option<bool>,
    queries: Option<Vec<RawQuery>>,
}

impl Payload {
    /// Parses `{"query", "params"?, "arrayMode"?}` or `{"queries": [...]}`; unknown fields are
    /// ignored. Parameters go straight to Postgres text, never through a `serde_json::Value`
    /// tree (whose nodes cost ten times the bytes of a body like `[0,0,0,…]`).
    pub fn parse(body: &[u8]) -> Result<Payload, SqlError> {
        let raw: RawPayload = serde_json::from_slice(body)
            .map_err(|e| SqlError::bad_request(format!("invalid request body: {e}")))?;
        match (raw.query, raw.queries) {
            (Some(query), _) => Ok(Payload::Single(Statement {
                query,
                params: raw.params.unwrap_or_default().0,
                array_mode: raw.array_mode,
            })),
            (None, Some(queries)) => Ok(Payload::Batch(
                queries
                    .into_iter()
                    .map(|q| Statement {
                        query: q.query,
                        params: q.params.0,
                        array_mode: q.array_mode,
                    })
                    .collect(),
            )),
            (None, None) => Err(SqlError::bad_request(
                "invalid request body: expected a \"query\" or a \"queries\" field",
            )),
        }
    }
}

/// Most parameters of one statement: the protocol's Bind message counts them in 16 bits.
const MAX_PARAMS: usize = u16::MAX as usize;

/// A statement's parameters as Postgres text: strings as they are, null as NULL, arrays as
/// array literals, anything else as its JSON text. (The driver only sends strings and nulls.)
#[derive(Default)]
struct Params(Vec<Option<String>>);

impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Params;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of parameters")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Params, A::Error> {
                let mut params = Vec::new();
                while let Some(Param(param)) = seq.next_element()? {
                    if params.len() == MAX_PARAMS {
                        return Err(de::Error::custom(format!(
                            "too many parameters (max is {MAX_PARAMS})"
                        )));
                    }
                    params.push(param);
                }
                Ok(Params(params))
            }
        }
        deserializer.deserialize_seq(Visitor)
    }
}

/// One parameter as Postgres text (`None`: NULL).
struct Param(Option<String>);

impl<'de> Deserialize<'de> for Param {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Param;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a parameter")
            }
            fn visit_unit<E>(self) -> Result<Param, E> {
                Ok(Param(None))
            }
            fn visit_str<E>(self, v: &str) -> Result<Param, E> {
                Ok(Param(Some(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Param, E> {
                Ok(Param(Some(v)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Param, E> {
                Ok(Param(Some(v.to_string())))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Param, E> {
                Ok(Param(Some(v.to_string())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Param, E> {
                Ok(Param(Some(v.to_string())))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Param, E> {
                Ok(Param(Some(float_text(v))))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Param, A::Error> {
                let mut out = String::new();
                write_array_literal(&mut out, seq)?;
                Ok(Param(Some(out)))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Param, A::Error> {
                let mut out = String::new();
                write_json_object(&mut out, map)?;
                Ok(Param(Some(out)))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A JSON number as JSON writes it (`1e100`, not a hundred digits).
fn float_text(v: f64) -> String {
    serde_json::Number::from_f64(v).map_or_else(|| "null".to_owned(), |n| n.to_string())
}

/// Writes a JSON array as a Postgres array literal: `{1,"a \"b\"",NULL,{2}}`.
fn write_array_literal<'de, A: de::SeqAccess<'de>>(
    out: &mut String,
    mut seq: A,
) -> Result<(), A::Error> {
    out.push('{');
    let mut first = true;
    while seq.next_element_seed(ArrayItem { out, first })?.is_some() {
        first = false;
    }
    out.push('}');
    Ok(())
}

/// One element of an array literal, written into `out` (after a comma unless `first`).
struct ArrayItem<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'de> de::DeserializeSeed<'de> for ArrayItem<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if !self.first {
            self.out.push(',');
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> de::Visitor<'de> for ArrayItem<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array element")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.out.push_str("NULL");
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        push_quoted(self.out, v);
        Ok(())
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.out.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.out.push_str(&v.to_string());
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.out.push_str(&v.to_string());
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.out.push_str(&float_text(v));
        Ok(())
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        write_array_literal(self.out, seq)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let mut object = String::new();
        write_json_object(&mut object, map)?;
        push_quoted(self.out, &object);
        Ok(())
    }
}

/// Writes a JSON object back as compact JSON text, keys in their order.
fn write_json_object<'de, A: de::MapAccess<'de>>(
    out: &mut String,
    mut map: A,
) -> Result<(), A::Error> {
    out.push('{');
    let mut first = true;
    while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
        if !first {
            out.push(',');
        }
        first = false;
        push_json_string(out, &key);
        out.push(':');
        map.next_value_seed(JsonText(out))?;
    }
    out.push('}');
    Ok(())
}

/// Any JSON value, written back as compact JSON text into the string.
struct JsonText<'a>(&'a mut String);

impl<'de> de::DeserializeSeed<'de> for JsonText<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> de::Visitor<'de> for JsonText<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.push_str("null");
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        push_json_string(self.0, v);
        Ok(())
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push_str(&v.to_string());
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push_str(&v.to_string());
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.push_str(&float_text(v));
        Ok(())
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.push('[');
        let mut first = true;
        while seq
            .next_element_seed(JsonElement { out: self.0, first })?
            .is_some()
        {
            first = false;
        }
        self.0.push(']');
        Ok(())
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        write_json_object(self.0, map)
    }
}

/// One element of a JSON array written back (after a comma unless `first`).
struct JsonElement<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'de> de::DeserializeSeed<'de> for JsonElement<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if !self.first {
            self.out.push(',');
        }
        deserializer.deserialize_any(JsonText(self.out))
    }
}

fn push_json_string(out: &mut String, s: &str) {
    // Serializing a string into JSON cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Output mode and batch transaction options, from the driver's headers. Booleans are true
/// only for the exact value `true`.
#[derive(Debug, PartialEq, Eq)]
struct RequestOptions {
    mode: OutputMode,
    txn: TxnOptions,
}

impl RequestOptions {
    fn from_headers(headers: &HeaderMap) -> Result<Self, SqlError> {
        let is_true = |name: &str| headers.get(name).is_some_and(|v| v.as_bytes() == b"true");
        let isolation = match headers.get(BATCH_ISOLATION_LEVEL) {
            None => None,
            Some(value) => Some(
                IsolationLevel::from_header(value.as_bytes())
                    .ok_or_else(|| SqlError::bad_request("invalid isolation level"))?,
            ),
        };
        Ok(RequestOptions {
            mode: OutputMode {
                raw_text: is_true(RAW_TEXT_OUTPUT),
                array_mode: is_true(ARRAY_MODE),
            },
            txn: TxnOptions {
                isolation,
                read_only: is_true(BATCH_READ_ONLY),
                deferrable: is_true(BATCH_DEFERRABLE),
            },
        })
    }
}

fn conn_info(state: &AppState, headers: &HeaderMap) -> Result<ConnInfo, SqlError> {
    let value = headers
        .get(CONNECTION_STRING)
        .ok_or_else(|| SqlError::bad_request(conn_info::ConnInfoError::Missing.to_string()))?;
    let text = std::str::from_utf8(value.as_bytes())
        .map_err(|_| SqlError::bad_request(conn_info::ConnInfoError::NotUtf8.to_string()))?;
    conn_info::parse(text, &state.default_endpoint, &state.sessions.domains)
        .map_err(|e| SqlError::bad_request(e.to_string()))
}

/// The token of `Authorization: Bearer <token>` (what `neon(url, { authToken })` sends), if
/// the request has the header; then the connection string must carry no password.
fn bearer_token<'h>(headers: &'h HeaderMap, info: &ConnInfo) -> Result<Option<&'h str>, SqlError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(SqlError::bad_request("more than one Authorization header"));
    }
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            SqlError::bad_request("invalid Authorization header: expected 'Bearer <JWT>'")
        })?;
    if !info.password.as_bytes().is_empty() {
        return Err(SqlError::bad_request(
            "a connection string with a password cannot be used with a JWT: remove the password",
        ));
    }
    Ok(Some(token))
}

/// Refuses a body whose declared length is over `max` before anything else is done for it.
fn check_declared_length(headers: &HeaderMap, max: usize) -> Result<Option<u64>, SqlError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(SqlError::RequestTooLarge { max });
    }
    Ok(declared)
}

/// Reads the body, at most `max` bytes, within `deadline` (408 beyond). A larger body gets
/// 413, but only after the rest of the upload was read and discarded (see [`discard_body`]).
async fn read_body(body: Body, max: usize, deadline: Duration) -> Result<Bytes, SqlError> {
    let read = async move {
        let mut body = body;
        let mut collected = Vec::new();
        loop {
            let Some(frame) = body.frame().await else {
                return Ok(Bytes::from(collected));
            };
            let frame =
                frame.map_err(|_| SqlError::bad_request("could not read the request body"))?;
            if let Some(data) = frame.data_ref() {
                if collected.len() + data.len() > max {
                    drop(collected);
                    discard_body(body, Drain::TOO_LARGE).await;
                    return Err(SqlError::RequestTooLarge { max });
                }
                collected.extend_from_slice(data);
            }
        }
    };
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or_else(|_| {
            Err(SqlError::Limited(Refused::new(
                Limit::BodyReadTimeout,
                format!(
                    "the request body did not arrive within {} seconds",
                    deadline.as_secs()
                ),
            )))
        })
}

/// Reads and drops what is left of a body the request is refused for, within `drain`'s
/// bounds, holding none of it: answering while the client still sends would make the kernel
/// reset the connection, and clients such as `fetch` would then report a broken connection
/// instead of the answer. Past the bounds the connection is closed anyway.
async fn discard_body(mut body: Body, drain: Drain) {
    let read = async {
        let mut drained = 0;
        while let Some(Ok(frame)) = body.frame().await {
            drained += frame.data_ref().map_or(0, |d| d.len());
            if drained > drain.bytes {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(drain.time, read).await;
}

/// How much of a refused body is read before answering.
#[derive(Clone, Copy)]
struct Drain {
    bytes: usize,
    time: Duration,
}

impl Drain {
    /// Over the size limit: the client may well be a driver sending a legitimate but too
    /// large query, which should see its 413.
    const TOO_LARGE: Drain = Drain {
        bytes: 16 * 1024 * 1024,
        time: Duration::from_secs(5),
    };
    /// A wrong password (or unknown role or endpoint): whoever sends a large body with one
    /// gets the answer only if it is small; reading megabytes for anonymous clients would be
    /// CPU they spend for free.
    const UNAUTHENTICATED: Drain = Drain {
        bytes: 1024 * 1024,
        time: Duration::from_secs(1),
    };
}

/// Records the request in metrics when it ends, including when the client goes away and the
/// handler is dropped mid-flight.
struct RequestRecord<'a> {
    state: &'a AppState,
    kind: RequestKind,
    started: Instant,
    status: Option<StatusCode>,
}

impl Drop for RequestRecord<'_> {
    fn drop(&mut self) {
        let metrics = &self.state.metrics;
        let status = match self.status {
            Some(status) => status.as_u16(),
            None => {
                metrics
                    .errors
                    .inc(crate::base::error::ErrorKind::ClientDisconnect);
                tracing::debug!("client went away; request cancelled");
                499
            }
        };
        metrics
            .http_requests
            .record(self.kind, status, self.started.elapsed().as_secs_f64());
    }
}

pub async fn handle(state: Arc<AppState>, headers: HeaderMap, body: Body) -> Response {
    let mut record = RequestRecord {
        state: &state,
        kind: RequestKind::Invalid,
        started: Instant::now(),
        status: None,
    };
    let answered = match receive(&state, &headers, body).await {
        Ok(request) => {
            record.kind = request.payload.kind();
            respond(&state, request).await
        }
        Err(error) => Err(error),
    };
    let response = answered.unwrap_or_else(|error| error_response(&state, error));
    record.status = Some(response.status());
    response
}

/// Logs and counts a failed request, and answers it.
fn error_response(state: &AppState, error: SqlError) -> Response {
    error.log();
    match &error {
        SqlError::Limited(refused) => state.metrics.limit_hit(refused.limit),
        SqlError::RequestTooLarge { .. } => state.metrics.limit_hit(Limit::RequestBytes),
        SqlError::ResponseTooLarge { .. } => state.metrics.limit_hit(Limit::ResponseSize),
        _ => {}
    }
    state.metrics.errors.inc(error.kind());
    error.into_response()
}

/// A request whose password was checked and whose body was read and parsed.
struct Received {
    options: RequestOptions,
    info: ConnInfo,
    /// The keys a password matched against its role's secret (`None`: Postgres judges it).
    proven: Option<ScramKeys>,
    /// Its place under the endpoint's limits, once the password is known to be right.
    admitted: Option<EndpointSlot>,
    /// The verified token of a JWT login, whose claims each checked-out backend gets.
    jwt: Option<JwtChecked>,
    body_len: usize,
    payload: Payload,
}

/// Reads the headers, checks the password, and only then reads and parses the body.
async fn receive(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Received, SqlError> {
    let options = RequestOptions::from_headers(headers)?;
    let mut info = conn_info(state, headers)?;
    let token = bearer_token(headers, &info)?;
    if let Err(e) = check_declared_length(headers, state.http.max_request_bytes) {
        discard_body(body, Drain::TOO_LARGE).await;
        return Err(e);
    }
    // Nothing of the body is read or parsed for a client that does not know the password.
    let (proven, jwt) = match authenticate(state, &mut info, token).await {
        Ok(checked) => checked,
        Err(e) => {
            discard_body(body, Drain::UNAUTHENTICATED).await;
            return Err(e);
        }
    };
    // A password the gateway could check counts against its endpoint's limits from here; one
    // Postgres judges (a static route) only once Postgres accepted it.
    let admitted = match proven {
        Some(_) => Some(state.endpoint_limits.admit(&info.endpoint)?),
        None => None,
    };
    let body = read_body(
        body,
        state.http.max_request_bytes,
        state.http.body_read_timeout,
    )
    .await?;
    let payload = Payload::parse(&body)?;
    Ok(Received {
        options,
        info,
        proven,
        admitted,
        jwt,
        body_len: body.len(),
        payload,
    })
}

/// Runs a received request on a backend of its endpoint and answers it.
async fn respond(state: &AppState, mut request: Received) -> Result<Response, SqlError> {
    if let Payload::Batch(statements) = &request.payload {
        if statements.is_empty() {
            let body = b"{\"results\":[]}".to_vec();
            return Ok(json_response(body, &request.payload, &request.options));
        }
    }
    let info = &request.info;
    let route = state.login().route(&info.endpoint, &info.user).await?;
    // In flight on its endpoint from here until the response is built (or the request fails,
    // or the client goes away and this future is dropped).
    let _in_flight = state.activity.query(&info.endpoint);
    let traffic = state.usage.endpoint(&info.endpoint);
    let (results, types) = run_on_backend(state, &mut request, route, &traffic).await?;
    let out = encode(&request, &results, &types, state.http.max_response_bytes)?;
    traffic.add(Direction::Ingress, request.body_len as u64);
    traffic.add(Direction::Egress, out.len() as u64);
    drop(request.admitted.take());
    Ok(json_response(out, &request.payload, &request.options))
}

/// Checks out a backend, runs the statements (once more on a new connection when a pooled one
/// had closed before the request reached it) and resolves the result types. The statements
/// sent are counted on `traffic`, failed ones too, except on a connection where they provably
/// never ran.
async fn run_on_backend(
    state: &AppState,
    request: &mut Received,
    route: Route,
    traffic: &Traffic,
) -> Result<(Vec<StatementResult>, TypeMap), SqlError> {
    let Received {
        options,
        info,
        proven,
        admitted,
        jwt,
        payload,
        ..
    } = request;
    let login = state.login();
    let (proven, jwt) = (proven.as_ref(), jwt.as_ref());
    let mut conn = checkout(state, info, route, proven, jwt, Reuse::Idle).await?;
    if admitted.is_none() {
        *admitted = Some(state.endpoint_limits.admit(&info.endpoint)?);
    }
    let (max, max_rows) = (state.http.max_response_bytes, state.http.max_response_rows);
    let mut sent = 0;
    let results = match execute(&mut conn, payload, options, max, max_rows, &mut sent).await {
        Err(QueryError::Backend(e)) if conn.never_ran(&e) => {
            sent = 0;
            // The idle connection was closed under us (a compute being suspended) and the
            // request provably did not run: once more, on a new connection through the route
            // table, which wakes the endpoint again if its address no longer answers.
            tracing::info!(endpoint = %info.endpoint, error = %e, "pooled connection was closed before the request reached it; retrying on a new connection");
            state.metrics.retries.inc(RetryOperation::PooledQuery);
            drop(conn);
            let route = login.route(&info.endpoint, &info.user).await?;
            conn = checkout(state, info, route, proven, jwt, Reuse::NewOnly).await?;
            execute(&mut conn, payload, options, max, max_rows, &mut sent).await
        }
        result => result,
    };
    traffic.add_queries(sent);
    let results = results?;
    let types = if options.mode.raw_text {
        TypeMap::new()
    } else {
        state
            .types
            .resolve(&info.endpoint, &info.database, conn.backend(), &results)
            .await?
    };
    conn.release();
    Ok((results, types))
}

/// A backend for the request: pooled or new ([`Login::checkout`]); for a token, with its
/// claims handed to SQL first, once more on a new connection when a pooled one had closed
/// before the claims reached it.
async fn checkout(
    state: &AppState,
    info: &ConnInfo,
    route: Route,
    proven: Option<&ScramKeys>,
    jwt: Option<&JwtChecked>,
    reuse: Reuse,
) -> Result<Conn, SqlError> {
    let login = state.login();
    let mut conn = login.checkout(info, route, proven, reuse).await?;
    let Some(jwt) = jwt else {
        return Ok(conn);
    };
    match jwt.begin(conn.backend()).await {
        Ok(()) => Ok(conn),
        // A pooled backend that was closed under us, or whose counter register a previous
        // user cleared (`DISCARD SEQUENCES`): once more, on a new connection.
        Err(e) if reuse == Reuse::Idle && conn.reused() && claims_retryable(&conn, &e) => {
            tracing::info!(endpoint = %info.endpoint, error = %e, "a pooled connection did not take the claims; retrying on a new connection");
            state.metrics.retries.inc(RetryOperation::PooledQuery);
            drop(conn);
            let route = login.route(&info.endpoint, &info.user).await?;
            let mut conn = login.checkout(info, route, proven, Reuse::NewOnly).await?;
            jwt.begin(conn.backend())
                .await
                .map_err(|e| LoginError::from_claims(e, &info.user))?;
            Ok(conn)
        }
        Err(e) => Err(LoginError::from_claims(e, &info.user).into()),
    }
}

/// Whether claims a reused backend did not take are worth a new connection: it was closed
/// before they reached it, or it refused them (its register was cleared by its last user).
fn claims_retryable(conn: &Conn, error: &ClaimsError) -> bool {
    match error {
        ClaimsError::Backend(e) => conn.never_ran(e),
        ClaimsError::Refused => true,
    }
}

/// The response body: one result, or `{"results":[…]}` for a batch.
fn encode(
    request: &Received,
    results: &[StatementResult],
    types: &TypeMap,
    max: usize,
) -> Result<Vec<u8>, SqlError> {
    let statements: Vec<&Statement> = match &request.payload {
        Payload::Single(statement) => vec![statement],
        Payload::Batch(statements) => statements.iter().collect(),
    };
    let mut out = Vec::new();
    let batch = matches!(request.payload, Payload::Batch(_));
    if batch {
        out.extend_from_slice(b"{\"results\":[");
    }
    for (i, (result, statement)) in results.iter().zip(statements).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mode = OutputMode {
            array_mode: statement
                .array_mode
                .unwrap_or(request.options.mode.array_mode),
            ..request.options.mode
        };
        json::write_result(&mut out, result, mode, types, max)
            .map_err(|json::TooLarge| SqlError::ResponseTooLarge { max })?;
    }
    if batch {
        out.extend_from_slice(b"]}");
    }
    Ok(out)
}

/// Runs the payload's statements on `conn`, counting those sent in `sent`.
async fn execute(
    conn: &mut Conn,
    payload: &Payload,
    options: &RequestOptions,
    max: usize,
    max_rows: usize,
    sent: &mut u64,
) -> Result<Vec<StatementResult>, QueryError> {
    let mut budget = ResponseBudget::new(max, max_rows);
    let backend = conn.backend();
    match payload {
        Payload::Single(statement) => Ok(vec![
            query::execute(backend, statement, &mut budget, sent).await?,
        ]),
        Payload::Batch(statements) => {
            query::execute_batch(backend, statements, &options.txn, &mut budget, sent).await
        }
    }
}

/// Checks the password or the token before anything else. A password: against the role's
/// secret (or a mock one, for an unknown endpoint or role) with a control plane, a match
/// giving the keys for the backend login; on a static route, not here (`None`: Postgres judges
/// it). A token: against the endpoint's JWKS rules, giving the JWT role's keys; the request
/// then goes to the endpoint itself, not its `-pooler` (claims are bound to one backend).
async fn authenticate(
    state: &AppState,
    info: &mut ConnInfo,
    token: Option<&str>,
) -> Result<(Option<ScramKeys>, Option<JwtChecked>), SqlError> {
    let login = state.login();
    if let Some(token) = token {
        let checked = login.check_jwt(&info.endpoint, &info.user, token).await?;
        info.endpoint = checked.endpoint.clone();
        return Ok((Some(checked.keys.clone()), Some(checked)));
    }
    let checked = login
        .check_password(&info.endpoint, &info.user, &info.password)
        .await?;
    Ok(match checked {
        Checked::Proven(keys) => (Some(keys), None),
        Checked::Unchecked => (None, None),
    })
}

fn json_response(body: Vec<u8>, payload: &Payload, options: &RequestOptions) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Payload::Batch(_) = payload {
        let txn = options.txn;
        if let Some(level) = txn.isolation {
            headers.insert(
                HeaderName::from_static(BATCH_ISOLATION_LEVEL),
                HeaderValue::from_static(level.header_value()),
            );
        }
        for (on, name) in [
            (txn.read_only, BATCH_READ_ONLY),
            (txn.deferrable, BATCH_DEFERRABLE),
        ] {
            if on {
                headers.insert(
                    HeaderName::from_static(name),
                    HeaderValue::from_static("true"),
                );
            }
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(query: &str, params: &[Option<&str>], array_mode: Option<bool>) -> Statement {
        Statement {
            query: query.into(),
            params: params.iter().map(|p| p.map(str::to_owned)).collect(),
            array_mode,
        }
    }

    fn check(body: &str, expected: Result<Payload, &str>) {
        let got = Payload::parse(body.as_bytes()).map_err(|e| e.to_string());
        match expected {
            Ok(payload) => assert_eq!(got.expect("parses"), payload, "{body}"),
            Err(fragment) => {
                let message = got.expect_err("fails");
                assert!(message.contains(fragment), "{body}: {message}");
            }
        }
    }

    #[test]
    fn payloads() {
        check(
            r#"{"query":"SELECT $1, $2","params":["1",null]}"#,
            Ok(Payload::Single(statement(
                "SELECT $1, $2",
                &[Some("1"), None],
                None,
            ))),
        );
        check(
            r#"{"query":"SELECT 1","arrayMode":false,"extra":1}"#,
            Ok(Payload::Single(statement("SELECT 1", &[], Some(false)))),
        );
        check(
            r#"{"queries":[{"query":"SELECT 1"},{"query":"SELECT $1","params":["x"],"arrayMode":true}]}"#,
            Ok(Payload::Batch(vec![
                statement("SELECT 1", &[], None),
                statement("SELECT $1", &[Some("x")], Some(true)),
            ])),
        );
        check(r#"{"queries":[]}"#, Ok(Payload::Batch(vec![])));
        check(
            r#"{"query":"SELECT $1,$2,$3,$4","params":[true,1.5,{"a":[1]},[1,"a \"b\"",null,[2]]]}"#,
            Ok(Payload::Single(statement(
                "SELECT $1,$2,$3,$4",
                &[
                    Some("true"),
                    Some("1.5"),
                    Some(r#"{"a":[1]}"#),
                    Some(r#"{1,"a \"b\"",NULL,{2}}"#),
                ],
                None,
            ))),
        );
        check("not json", Err("invalid request body"));
        check("[1,2]", Err("invalid request body"));
        check(
            r#"{"params":[]}"#,
            Err("expected a \"query\" or a \"queries\" field"),
        );
        check(r#"{"query":5}"#, Err("invalid request body"));
        check(r#"{"queries":{"query":"x"}}"#, Err("invalid request body"));
        check("{\"query\":\"\u{FFFD}\"", Err("invalid request body"));
    }

    #[test]
    fn invalid_utf8_body_is_rejected() {
        let got = Payload::parse(b"{\"query\":\"\xff\xfe\"}");
        assert!(matches!(got, Err(SqlError::BadRequest(_))));
    }

    #[test]
    fn header_options() {
        let mut headers = HeaderMap::new();
        headers.insert(RAW_TEXT_OUTPUT, HeaderValue::from_static("true"));
        headers.insert(ARRAY_MODE, HeaderValue::from_static("TRUE"));
        headers.insert(
            BATCH_ISOLATION_LEVEL,
            HeaderValue::from_static("Serializable"),
        );
        headers.insert(BATCH_READ_ONLY, HeaderValue::from_static("true"));
        headers.insert(BATCH_DEFERRABLE, HeaderValue::from_static("false"));
        let options = RequestOptions::from_headers(&headers).expect("valid");
        assert_eq!(
            options,
            RequestOptions {
                mode: OutputMode {
                    raw_text: true,
                    array_mode: false
                },
                txn: TxnOptions {
                    isolation: Some(IsolationLevel::Serializable),
                    read_only: true,
                    deferrable: false
                }
            }
        );
        headers.insert(
            BATCH_ISOLATION_LEVEL,
            HeaderValue::from_static("serializable"),
        );
        assert!(RequestOptions::from_headers(&headers).is_err());
    }
}
