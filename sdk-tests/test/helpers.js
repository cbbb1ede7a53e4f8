// Shared helpers for the SDK compatibility suite.
//
// The suite compares the real `@neondatabase/serverless` driver talking to the
// gateway (over HTTP and WebSocket) with node-postgres talking straight to the
// same Postgres over TCP. Everything is configured from the environment (set by
// `make test`); a missing variable is a hard failure, never a skip.

import assert from 'node:assert/strict';
import { neon, neonConfig, NeonDbError } from '@neondatabase/serverless';
import pg from 'pg';
import ws from 'ws';

/** The value of environment variable `name`; throws when it is unset or empty. */
export function requireEnv(name) {
  const value = process.env[name];
  if (value === undefined || value.trim() === '') {
    throw new Error(
      `environment variable ${name} is not set: the SDK suite needs the variables listed in ` +
        `sdk-tests/README.md (run it via \`make test\`)`,
    );
  }
  return value.trim();
}

export const GATEWAY_HTTP = requireEnv('GATEWAY_HTTP').replace(/\/+$/, '');
export const GATEWAY_ADMIN = requireEnv('GATEWAY_ADMIN').replace(/\/+$/, '');
export const DATABASE_URL = requireEnv('DATABASE_URL');
export const DIRECT_DATABASE_URL = requireEnv('DIRECT_DATABASE_URL');
export const SQL_ENDPOINT = GATEWAY_HTTP + '/sql';
/** The gateway's public port: HTTP, WebSocket and Postgres (plain or TLS) all arrive on it. */
export const GATEWAY_HOST = new URL(GATEWAY_HTTP).hostname;
export const GATEWAY_PORT = Number(new URL(GATEWAY_HTTP).port);

// `*.localtest.me` does not resolve everywhere, so the driver is pointed at the
// gateway explicitly; the host inside the connection string still names the
// endpoint (the gateway routes on its first DNS label).
neonConfig.fetchEndpoint = () => SQL_ENDPOINT;
// Node 20 has no global WebSocket: the driver's Client and Pool use the `ws`
// package. The files that use them also set wsProxy (see ws.test.js).
neonConfig.webSocketConstructor = ws;

export { neon, neonConfig, NeonDbError, pg };

/** The driver's HTTP query function for DATABASE_URL (or another URL). */
export function httpSql(opts = {}, url = DATABASE_URL) {
  return neon(url, opts);
}

/** A connected node-postgres client on DIRECT_DATABASE_URL. */
export async function pgClient() {
  const client = new pg.Client({ connectionString: DIRECT_DATABASE_URL });
  await client.connect();
  return client;
}

/**
 * Run a statement with node-postgres the way the gateway runs it: the
 * extended protocol (Parse/Bind/Execute with untyped text parameters), even
 * when there are no parameters.
 */
export function pgQuery(client, text, values = [], extra = {}) {
  return client.query({ text, values, queryMode: 'extended', ...extra });
}

const RUN_ID = `${process.pid.toString(36)}${Date.now().toString(36)}`;
let counter = 0;

/** A unique, lower-case SQL identifier for schema objects created by this run. */
export function uniqueName(prefix) {
  counter += 1;
  return `sdkt_${prefix}_${RUN_ID}_${counter}`;
}

/** Double-quote an identifier. */
export function ident(name) {
  return '"' + name.replace(/"/g, '""') + '"';
}

/** A connection string equal to DATABASE_URL with some URL parts replaced. */
export function variantUrl({ password, hostname, username, database } = {}) {
  const u = new URL(DATABASE_URL);
  if (password !== undefined) u.password = encodeURIComponent(password);
  if (hostname !== undefined) u.hostname = hostname;
  if (username !== undefined) u.username = encodeURIComponent(username);
  if (database !== undefined) u.pathname = '/' + encodeURIComponent(database);
  return u.toString();
}

/**
 * Turn parsed values into plain data so results from the driver (which bundles
 * its own copies of pg-types / postgres-interval) and from node-postgres can be
 * compared with deepStrictEqual without tripping over distinct prototypes.
 * Nothing is lost: Buffers become hex, Dates their epoch ms (or 'Invalid Date'),
 * interval objects their own properties plus their Postgres text form.
 */
export function normalize(value) {
  if (value === null || value === undefined) return value;
  if (typeof value !== 'object') return value;
  if (value instanceof Date) {
    const t = value.getTime();
    return { $date: Number.isNaN(t) ? 'Invalid Date' : t };
  }
  if (value instanceof Uint8Array) {
    return { $bytes: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('hex') };
  }
  if (Array.isArray(value)) return value.map(normalize);
  const proto = Object.getPrototypeOf(value);
  const out = {};
  for (const [k, v] of Object.entries(value)) out[k] = normalize(v);
  if (proto !== Object.prototype && proto !== null) {
    const name = value.constructor?.name ?? 'anonymous';
    const text = typeof value.toPostgres === 'function' ? value.toPostgres() : undefined;
    return { $class: name, $text: text, ...out };
  }
  return out;
}

/** deepStrictEqual on normalised values. */
export function assertSameValues(actual, expected, message) {
  assert.deepStrictEqual(normalize(actual), normalize(expected), message);
}

/** The subset of field metadata compared in most tests. */
export function fieldSummary(fields) {
  return fields.map((f) => ({ name: f.name, dataTypeID: f.dataTypeID }));
}

/** Full field metadata as node-postgres exposes it. */
export function fieldDetails(fields) {
  return fields.map((f) => ({
    name: f.name,
    dataTypeID: f.dataTypeID,
    tableID: f.tableID,
    columnID: f.columnID,
    dataTypeSize: f.dataTypeSize,
    dataTypeModifier: f.dataTypeModifier,
    format: f.format,
  }));
}

/**
 * Compare a driver `fullResults: true` result with a node-postgres Result:
 * command, rowCount, field names/type OIDs and the parsed rows.
 */
export function assertSameResult(httpResult, pgResult, label = '') {
  const where = label ? ` (${label})` : '';
  assert.equal(httpResult.command, pgResult.command, `command${where}`);
  assert.equal(httpResult.rowCount, pgResult.rowCount, `rowCount${where}`);
  assert.deepStrictEqual(fieldSummary(httpResult.fields), fieldSummary(pgResult.fields), `fields${where}`);
  assertSameValues(httpResult.rows, pgResult.rows, `rows${where}`);
}

/**
 * Run `text` (with `values`) on `viaGateway` (the driver over WebSocket, or node-postgres
 * through the gateway) and on `direct` (node-postgres straight to Postgres), and compare
 * every result: command, rowCount, oid, full field metadata and the parsed rows. Several
 * statements in one simple query give several results; all are compared.
 */
export async function assertSameQuery(viaGateway, direct, text, values, label = text) {
  const g = await viaGateway.query(text, values);
  const d = await direct.query(text, values);
  const gs = Array.isArray(g) ? g : [g];
  const ds = Array.isArray(d) ? d : [d];
  assert.equal(gs.length, ds.length, `number of results (${label})`);
  for (let i = 0; i < gs.length; i++) {
    assert.equal(gs[i].command, ds[i].command, `command (${label})`);
    assert.equal(gs[i].rowCount, ds[i].rowCount, `rowCount (${label})`);
    assert.equal(gs[i].oid, ds[i].oid, `oid (${label})`);
    assert.deepStrictEqual(fieldDetails(gs[i].fields), fieldDetails(ds[i].fields), `fields (${label})`);
    assertSameValues(gs[i].rows, ds[i].rows, `rows (${label})`);
  }
  return { g, d };
}

/**
 * Run `text` on both clients; both must fail with equal error fields, and `viaGateway` must
 * still work afterwards. Returns the gateway-side error.
 */
export async function assertSameQueryError(viaGateway, direct, text, values, label = text) {
  const directErr = await captureError(() => direct.query(text, values));
  assert.ok(directErr instanceof pg.DatabaseError, `node-postgres should raise a DatabaseError: ${directErr}`);
  const err = await captureError(() => viaGateway.query(text, values));
  assert.deepStrictEqual(errorSummary(err), errorSummary(directErr), label);
  assert.deepStrictEqual((await viaGateway.query('SELECT 1 AS still_ok')).rows, [{ still_ok: 1 }], `usable after: ${label}`);
  return err;
}

/** One row of many Postgres types, for comparing sessions through the gateway with direct ones. */
export const TYPES_QUERY = `SELECT
    1::int2 AS i2, (-2147483648)::int4 AS i4, 9223372036854775807::int8 AS i8, 4294967295::oid AS oid,
    '123456789012345678901234567890.123456789'::numeric AS num, 'NaN'::numeric AS num_nan,
    0.1::float4 AS f4, 'Infinity'::float8 AS f8_inf, '-0'::float8 AS f8_negzero, 1/3::float8 AS third,
    true AS t, NULL::bool AS nb, 'héllo — 🐘 日本語' AS unicode, '' AS empty, 'abc'::char(5) AS bpchar,
    'abc'::varchar(10) AS vc, 'relname'::name AS nm, E'line1\\nline2\\ttab' AS esc,
    '\\xdeadbeef'::bytea AS bytes, ''::bytea AS empty_bytes,
    '2024-02-29'::date AS d, 'infinity'::date AS d_inf, '12:34:56.789'::time AS tm, '12:34:56+05:30'::timetz AS ttz,
    '2024-01-02 03:04:05.678912'::timestamp AS ts, '2024-06-01 12:00:00.123456+02'::timestamptz AS tstz,
    '-infinity'::timestamptz AS tstz_ninf, '0044-03-15 BC'::date AS d_bc,
    '1 year 2 mons 3 days 04:05:06.789'::interval AS iv, '-1 day'::interval AS iv_neg,
    '{"a":{"b":[1,2,{"c":null}]},"s":"x"}'::json AS js, '[1,"two",null,true]'::jsonb AS jsb, 'null'::jsonb AS jsb_null,
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
    ARRAY[1, NULL, -3]::int[] AS ints, ARRAY['a', NULL, 'with "quote"', 'comma,sep', '']::text[] AS texts,
    '{{1,2},{3,4}}'::int[] AS two_d, '{}'::int[] AS empty_arr, ARRAY['2024-01-01', NULL]::date[] AS dates,
    ARRAY['{"a":1}']::jsonb[] AS jsonbs, ARRAY['\\x0102'::bytea] AS byteas,
    '(1.5,-2)'::point AS pt, '<(1,2),3>'::circle AS circ, 12.34::money AS money,
    '192.168.0.1/24'::inet AS inet, '10.0.0.0/8'::cidr AS cidr, '08:00:2b:01:02:03'::macaddr AS mac,
    B'10101'::bit(5) AS bits, 'a fat cat'::tsvector AS tsv, '[1,10)'::int4range AS r4,
    '[2024-01-01,2024-02-01)'::daterange AS dr, 'int4'::regtype AS regtype, '<a>x</a>'::xml AS x`;

/** The error fields node-postgres' DatabaseError and the driver's NeonDbError share. */
export const ERROR_FIELDS = [
  'message',
  'code',
  'severity',
  'detail',
  'hint',
  'position',
  'internalPosition',
  'internalQuery',
  'where',
  'schema',
  'table',
  'column',
  'dataType',
  'constraint',
  'file',
  'line',
  'routine',
];

export function errorSummary(err) {
  const out = {};
  for (const k of ERROR_FIELDS) out[k] = err?.[k];
  return out;
}

/** Await a promise that must reject; return the rejection. */
export async function captureError(promiseOrFn) {
  try {
    await (typeof promiseOrFn === 'function' ? promiseOrFn() : promiseOrFn);
  } catch (err) {
    return err;
  }
  assert.fail('expected the query to fail, but it succeeded');
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Poll `check` (sync or async, truthy when done) until it holds; fail with
 * `what` after `timeoutMs`. For effects the gateway records after a client
 * has already moved on (a session's end, a cancel). Returns check's value.
 */
export async function waitFor(check, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await sleep(50);
  }
}

// ---------------------------------------------------------------------------
// The admin listener: Prometheus metrics and per-endpoint usage
// ---------------------------------------------------------------------------

/** The Prometheus text from GET $GATEWAY_ADMIN/metrics. */
export async function scrapeMetrics() {
  const res = await fetch(GATEWAY_ADMIN + '/metrics');
  assert.equal(res.status, 200, 'GET /metrics');
  return res.text();
}

function parseLabels(raw) {
  const labels = {};
  if (!raw) return labels;
  for (const m of raw.slice(1, -1).matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
    labels[m[1]] = m[2];
  }
  return labels;
}

/**
 * The sum of the samples of metric `name` (exactly that name) whose labels
 * include all of `labels`; 0 when there are none (a labelled counter appears
 * only once it has been touched).
 */
export function metricSum(text, name, labels = {}) {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = parseLabels(m[2]);
    if (!Object.entries(labels).every(([k, v]) => have[k] === v)) continue;
    const v = Number(m[3]);
    assert.ok(Number.isFinite(v), `unparsable sample: ${line}`);
    sum += v;
  }
  return sum;
}

/** metricSum on a fresh scrape. */
export async function metric(name, labels = {}) {
  return metricSum(await scrapeMetrics(), name, labels);
}

/** GET $GATEWAY_ADMIN/usage: `{ endpoints: { <id>: { ingress_bytes, egress_bytes } } }`. */
export async function usage() {
  const res = await fetch(GATEWAY_ADMIN + '/usage');
  assert.equal(res.status, 200, 'GET /usage');
  return res.json();
}

/** The usage counters of one endpoint (zeros when it has none yet). */
export async function endpointUsage(endpoint = 'db') {
  const body = await usage();
  assert.ok(body && typeof body.endpoints === 'object', `unexpected /usage body: ${JSON.stringify(body)}`);
  return body.endpoints[endpoint] ?? { ingress_bytes: 0, egress_bytes: 0 };
}

/**
 * Starts a long `pg_sleep` on client `c` and resolves once Postgres (seen through `direct`)
 * reports it running. `outcome` resolves to the error that ends the sleep; `active` is the
 * query object node-postgres's `cancel` needs.
 */
export async function startSleep(c, direct, marker) {
  const pid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
  const query = c.query(`SELECT pg_sleep(60) /* ${marker} */`);
  const outcome = query.then(
    () => assert.fail('the sleep should have been cancelled'),
    (err) => err,
  );
  await waitFor(
    async () =>
      (
        await direct.query(`SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query LIKE $2`, [
          pid,
          `%${marker}%`,
        ])
      ).rowCount === 1,
    `pg_sleep running on backend ${pid}`,
  );
  return { outcome, active: c.activeQuery };
}
