// The wake service (control plane) of the main stack, end to end: its REST API (create,
// list, get, patch, roles, databases, delete), the real driver over HTTP and WebSocket and
// node-postgres over TCP against endpoints it created (each with its own role), isolation of
// credentials between endpoints, `-pooler` routing through PgBouncer, the gateway's warm path
// (no control-plane calls once an endpoint is known), every API error, the Neon-compatible
// proxy API, /openapi.json and the operator CLI.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Client, Pool } from '@neondatabase/serverless';
import {
  neon,
  neonConfig,
  NeonDbError,
  pg,
  requireEnv,
  GATEWAY_HOST,
  GATEWAY_PORT,
  uniqueName,
  errorSummary,
  captureError,
} from './helpers.js';
import { WakeApi, controlPlaneCalls, accepts, run, sleep } from './stack.js';

const WAKE_URL = requireEnv('WAKE_URL').replace(/\/+$/, '');
const WAKE_ADMIN_TOKEN = requireEnv('WAKE_ADMIN_TOKEN');
const WAKE_BIN = requireEnv('WAKE_BIN');

neonConfig.useSecureWebSocket = false;
neonConfig.wsProxy = (host, port) => `${GATEWAY_HOST}:${GATEWAY_PORT}/v2?address=${host}:${port}`;

const api = new WakeApi(WAKE_URL, WAKE_ADMIN_TOKEN);
const RUN = `${process.pid.toString(36)}${randomBytes(3).toString('hex')}`;
const password = () => randomBytes(12).toString('base64url');

/** The two endpoints this file creates, each with its own role and database. */
const A = { id: `cp-a-${RUN}`, role: `sdkt_ra_${RUN}`, password: password(), database: `sdkt_da_${RUN}` };
const B = { id: `cp-b-${RUN}`, role: `sdkt_rb_${RUN}`, password: password(), database: `sdkt_db_${RUN}` };
/** An endpoint for the warm-path test only. */
const C = { id: `cp-c-${RUN}`, role: `sdkt_rc_${RUN}`, password: password(), database: 'postgres' };
/** Ids that must never exist; deleted in after() in case a validation let one through. */
/** An endpoint for the thundering-herd test only. */
const D = { id: `cp-d-${RUN}`, role: `sdkt_rd_${RUN}`, password: password(), database: 'postgres' };
const MUST_NOT_EXIST = [`cp-v1-${RUN}`, `cp-v2-${RUN}`, `cp-v3-${RUN}`, `cp-v4-${RUN}`];
const T = uniqueName('cp_items');

const opened = [];

after(async () => {
  for (const c of opened) if (!c._ending) await c.end().catch(() => {});
  for (const id of [A.id, B.id, C.id, D.id, ...MUST_NOT_EXIST]) {
    const status = await api.remove(id);
    if (status !== 204 && status !== 404) console.error(`cleanup: DELETE ${id} answered ${status}`);
  }
});

/** A connection string for `ep` (its own role and database unless overridden). */
function urlFor(ep, { pooler = false, role = ep.role, pw = ep.password, database = ep.database, endpoint = ep.id } = {}) {
  const host = `${endpoint}${pooler ? '-pooler' : ''}.localtest.me`;
  return `postgres://${encodeURIComponent(role)}:${encodeURIComponent(pw)}@${host}:${GATEWAY_PORT}/${database}`;
}

/** node-postgres settings for the gateway's port, naming the endpoint with options=endpoint=. */
function tcpConfig(ep, { pooler = false, role = ep.role, pw = ep.password, database = ep.database, endpoint = ep.id } = {}) {
  return {
    host: GATEWAY_HOST,
    port: GATEWAY_PORT,
    user: role,
    password: pw,
    database,
    options: `endpoint=${endpoint}${pooler ? '-pooler' : ''}`,
  };
}

async function tcpClient(config) {
  const c = new pg.Client(config);
  await c.connect();
  opened.push(c);
  return c;
}

async function wsClient(url) {
  const c = new Client({ connectionString: url });
  c.on('error', () => {});
  opened.push(c);
  await c.connect();
  return c;
}

/** Connect (driver WebSocket Client) and query; must fail. The error. */
async function wsFailure(url) {
  const c = new Client({ connectionString: url });
  c.on('error', () => {});
  const err = await captureError(async () => {
    await c.connect();
    await c.query('SELECT 1');
  });
  await c.end().catch(() => {});
  return err;
}

/** Connect (node-postgres through the gateway) and query; must fail. The error. */
async function tcpFailure(config) {
  const c = new pg.Client(config);
  c.on('error', () => {});
  const err = await captureError(async () => {
    await c.connect();
    await c.query('SELECT 1');
  });
  await c.end().catch(() => {});
  return err;
}

/** An API error answer: status, JSON `{"error":{"code","message"}}`. The body's error. */
function assertApiError(r, status, what) {
  assert.equal(r.status, status, `${what}: expected ${status}, got ${r.status}: ${r.text}`);
  assert.match(r.headers.get('content-type') ?? '', /^application\/json/, `${what}: content-type`);
  assert.ok(r.json && typeof r.json.error === 'object', `${what}: body is {"error": {...}}: ${r.text}`);
  const { code, message } = r.json.error;
  assert.equal(typeof code, 'string', `${what}: error.code`);
  assert.ok(code.length > 0, `${what}: error.code is empty`);
  assert.equal(typeof message, 'string', `${what}: error.message`);
  assert.ok(message.length >= 10, `${what}: error.message is not a clear message: ${JSON.stringify(message)}`);
  return r.json.error;
}

/** A proxy-API error answer in Neon's shape. The body. */
function assertProxyError(r, status, what) {
  assert.equal(r.status, status, `${what}: expected ${status}, got ${r.status}: ${r.text}`);
  assert.ok(r.json, `${what}: JSON body: ${r.text}`);
  assert.equal(typeof r.json.error, 'string', `${what}: "error" is a string: ${r.text}`);
  assert.ok(r.json.error.length > 0, `${what}: "error" is empty`);
  assert.ok(r.json.status && typeof r.json.status === 'object', `${what}: "status": ${r.text}`);
  assert.equal(typeof r.json.status.code, 'string', `${what}: status.code`);
  assert.equal(typeof r.json.status.message, 'string', `${what}: status.message`);
  assert.ok(r.json.status.details && typeof r.json.status.details === 'object', `${what}: status.details`);
  return r.json;
}

const HOST_PORT = /^127\.0\.0\.1:(\d+)$/;
const portOf = (address) => Number(HOST_PORT.exec(address)?.[1]);

function assertActive(ep, id, what) {
  assert.equal(ep.id, id, `${what}: id`);
  assert.equal(ep.state, 'active', `${what}: state of ${id}: ${JSON.stringify(ep)}`);
  assert.equal(ep.operation ?? null, null, `${what}: no operation in progress on ${id}`);
  assert.match(ep.addresses?.direct ?? '', HOST_PORT, `${what}: addresses.direct`);
  assert.match(ep.addresses?.pooler ?? '', HOST_PORT, `${what}: addresses.pooler`);
  assert.notEqual(ep.addresses.direct, ep.addresses.pooler, `${what}: direct and pooler differ`);
}

// ---------------------------------------------------------------------------
// The REST API: create, list, get, patch, roles, databases
// ---------------------------------------------------------------------------

test('API: create two endpoints; list and get show them active with addresses; PATCH; roles and databases', { timeout: 180_000 }, async () => {
  const created = await Promise.all([A, B].map((ep) => api.create(ep.id, { suspend_timeout_seconds: -1 })));
  for (const [i, ep] of [A, B].entries()) {
    assertActive(created[i], ep.id, 'POST /v1/endpoints');
    assert.equal(created[i].suspend_timeout_seconds, -1);
    assert.deepStrictEqual(created[i].roles, [], 'a new endpoint has no roles');
    ep.addresses = created[i].addresses;
  }
  const ports = [A, B].flatMap((ep) => [portOf(ep.addresses.direct), portOf(ep.addresses.pooler)]);
  assert.equal(new Set(ports).size, 4, `four distinct ports: ${ports}`);
  for (const port of ports) assert.ok(await accepts(`127.0.0.1:${port}`), `port ${port} accepts connections`);

  const list = await api.endpoints();
  assert.ok(Array.isArray(list), 'GET /v1/endpoints is an array');
  for (const ep of [A, B]) {
    const row = list.find((e) => e.id === ep.id);
    assert.ok(row, `${ep.id} is listed`);
    assertActive(row, ep.id, 'GET /v1/endpoints');
    assert.deepStrictEqual(row.addresses, ep.addresses);
  }
  assert.ok(list.some((e) => e.id === 'db'), 'the default endpoint is listed too');
  for (const ep of [A, B]) {
    const one = await api.expect(200, 'GET', `/v1/endpoints/${ep.id}`);
    assertActive(one, ep.id, 'GET /v1/endpoints/{id}');
    assert.deepStrictEqual(one.addresses, ep.addresses);
    for (const field of ['created_at', 'updated_at']) assert.ok(!Number.isNaN(Date.parse(one[field])), `${field} is a timestamp`);
  }

  const patched = await api.expect(200, 'PATCH', `/v1/endpoints/${A.id}`, { body: { suspend_timeout_seconds: 900 } });
  assert.equal(patched.suspend_timeout_seconds, 900, 'PATCH answers the new value');
  assert.equal((await api.expect(200, 'GET', `/v1/endpoints/${A.id}`)).suspend_timeout_seconds, 900, 'GET shows it');
  assert.equal((await api.expect(200, 'GET', `/v1/endpoints/${B.id}`)).suspend_timeout_seconds, -1, 'B is unchanged');
  // only the fields present change
  const cu = await api.expect(200, 'PATCH', `/v1/endpoints/${A.id}`, { body: { max_cu: 2 } });
  assert.equal(cu.max_cu, 2);
  assert.equal(cu.suspend_timeout_seconds, 900);

  for (const ep of [A, B]) {
    const role = await api.createRole(ep.id, ep.role, ep.password);
    assert.equal(role.name, ep.role);
    assert.ok(!JSON.stringify(role).includes(ep.password), 'the password is not echoed');
    const db = await api.createDatabase(ep.id, ep.database, ep.role);
    assert.deepStrictEqual(db, { name: ep.database, owner: ep.role });
  }
  for (const ep of [A, B]) {
    const one = await api.expect(200, 'GET', `/v1/endpoints/${ep.id}`);
    assert.deepStrictEqual(one.roles, [ep.role], `roles of ${ep.id}`);
    assert.deepStrictEqual(
      one.databases.map((d) => ({ name: d.name, owner: d.owner })),
      [{ name: ep.database, owner: ep.role }],
      `databases of ${ep.id}`,
    );
    assert.ok(!JSON.stringify(one).includes(ep.password), 'GET never shows the password');
  }
});

// ---------------------------------------------------------------------------
// The driver against the new endpoints
// ---------------------------------------------------------------------------

test('the driver over HTTP (neon()) on both endpoints, each with its own role: create, insert, select', { timeout: 60_000 }, async () => {
  for (const ep of [A, B]) {
    const sql = neon(urlFor(ep));
    await sql.query(`CREATE TABLE ${T} (id int PRIMARY KEY, who text NOT NULL, via text NOT NULL)`);
    const inserted = await sql.query(`INSERT INTO ${T} VALUES ($1, $2, 'http') RETURNING id`, [1, ep.id]);
    assert.deepStrictEqual(inserted, [{ id: 1 }]);
    const rows = await sql`SELECT current_user AS usr, current_database() AS db, count(*)::int AS n FROM ${sql.unsafe(T)}`;
    assert.deepStrictEqual(rows, [{ usr: ep.role, db: ep.database, n: 1 }]);
  }
});

test('the driver over WebSocket (Pool and Client) on both endpoints', { timeout: 60_000 }, async () => {
  for (const ep of [A, B]) {
    const pool = new Pool({ connectionString: urlFor(ep), max: 3 });
    pool.on('error', () => {});
    try {
      await Promise.all([2, 3, 4].map((id) => pool.query(`INSERT INTO ${T} VALUES ($1, $2, 'ws-pool')`, [id, ep.id])));
      const { rows } = await pool.query(`SELECT current_user AS usr, current_database() AS db, count(*)::int AS n FROM ${T}`);
      assert.deepStrictEqual(rows, [{ usr: ep.role, db: ep.database, n: 4 }]);
    } finally {
      await pool.end();
    }
    const c = await wsClient(urlFor(ep));
    await c.query('BEGIN');
    await c.query(`INSERT INTO ${T} VALUES (5, $1, 'ws-client')`, [ep.id]);
    await c.query('COMMIT');
    const { rows } = await c.query(`SELECT DISTINCT who FROM ${T}`);
    assert.deepStrictEqual(rows, [{ who: ep.id }], `${ep.id} sees only its own rows`);
    await c.end();
  }
});

test('node-postgres over TCP (options=endpoint=) on both endpoints', { timeout: 60_000 }, async () => {
  for (const ep of [A, B]) {
    const c = await tcpClient(tcpConfig(ep));
    await c.query(`INSERT INTO ${T} VALUES (6, $1, 'tcp')`, [ep.id]);
    const { rows } = await c.query(`SELECT current_user AS usr, count(*)::int AS n, array_agg(DISTINCT who) AS who FROM ${T}`);
    assert.deepStrictEqual(rows, [{ usr: ep.role, n: 6, who: [ep.id] }]);
    await c.end();
  }
});

test("credentials for endpoint A are refused on endpoint B, exactly like a wrong password (HTTP, WebSocket, TCP)", { timeout: 60_000 }, async () => {
  // A's role and password, sent to B (where that role does not exist) ...
  const onB = { endpoint: B.id };
  // ... and A's role with a wrong password, sent to A.
  const wrong = { pw: 'not-the-password' };

  const httpCross = await captureError(() => neon(urlFor(A, onB))`SELECT 1`);
  const httpWrong = await captureError(() => neon(urlFor(A, wrong))`SELECT 1`);
  assert.ok(httpCross instanceof NeonDbError, `HTTP: a NeonDbError, got ${httpCross}`);
  assert.equal(httpCross.message, `password authentication failed for user '${A.role}'`, 'HTTP');
  assert.deepStrictEqual(errorSummary(httpCross), errorSummary(httpWrong), 'HTTP: same as a wrong password');

  const wsCross = await wsFailure(urlFor(A, onB));
  const wsWrong = await wsFailure(urlFor(A, wrong));
  assert.equal(wsCross.code, '28P01', `WebSocket: ${wsCross.message}`);
  assert.equal(wsCross.message, `password authentication failed for user '${A.role}'`, 'WebSocket');
  assert.deepStrictEqual(errorSummary(wsCross), errorSummary(wsWrong), 'WebSocket: same as a wrong password');

  const tcpCross = await tcpFailure(tcpConfig(A, onB));
  const tcpWrong = await tcpFailure(tcpConfig(A, wrong));
  assert.equal(tcpCross.code, '28P01', `TCP: ${tcpCross.message}`);
  assert.equal(tcpCross.message, `password authentication failed for user '${A.role}'`, 'TCP');
  assert.deepStrictEqual(errorSummary(tcpCross), errorSummary(tcpWrong), 'TCP: same as a wrong password');

  // and the other way round, B's credentials on A
  const back = await captureError(() => neon(urlFor(B, { endpoint: A.id }))`SELECT 1`);
  assert.equal(back.message, `password authentication failed for user '${B.role}'`, 'B on A');
  // the right credentials still work
  assert.deepStrictEqual(await neon(urlFor(B))`SELECT 1 AS ok`, [{ ok: 1 }]);
});

// ---------------------------------------------------------------------------
// -pooler: PgBouncer in transaction mode
// ---------------------------------------------------------------------------

// Through the gateway straight to Postgres the backend's client is the gateway, over TCP
// from 127.0.0.1, on the endpoint's direct port. Through `-pooler` it is PgBouncer, on the
// compute's private unix socket: no client address and no server port.
const WHO = `SELECT host(inet_client_addr()) AS client_addr, inet_server_port() AS server_port`;

test('-pooler over HTTP: sql.transaction([...]) runs through PgBouncer', { timeout: 60_000 }, async () => {
  const direct = neon(urlFor(A));
  assert.deepStrictEqual(await direct.query(WHO), [{ client_addr: '127.0.0.1', server_port: portOf(A.addresses.direct) }], 'direct: the gateway over TCP');

  const pooled = neon(urlFor(A, { pooler: true }));
  const [ins, who, count] = await pooled.transaction([
    pooled`INSERT INTO ${pooled.unsafe(T)} VALUES (10, ${A.id}, 'http-pooler') RETURNING id`,
    pooled.query(WHO),
    pooled`SELECT count(*)::int AS n FROM ${pooled.unsafe(T)} WHERE id = 10`,
  ]);
  assert.deepStrictEqual(ins, [{ id: 10 }]);
  assert.deepStrictEqual(who, [{ client_addr: null, server_port: null }], 'through PgBouncer: the unix socket');
  assert.deepStrictEqual(count, [{ n: 1 }]);
  assert.deepStrictEqual(await pooled`SELECT current_user AS usr, current_database() AS db`, [{ usr: A.role, db: A.database }]);
  // committed: seen from a direct connection
  assert.deepStrictEqual(await direct.query(`SELECT via FROM ${T} WHERE id = 10`), [{ via: 'http-pooler' }]);
  // a failed transaction through the pooler rolls back
  const err = await captureError(() =>
    pooled.transaction([pooled`INSERT INTO ${pooled.unsafe(T)} VALUES (11, 'x', 'http-pooler')`, pooled`SELECT 1/0`]),
  );
  assert.equal(err.code, '22012', err.message);
  assert.deepStrictEqual(await direct.query(`SELECT count(*)::int AS n FROM ${T} WHERE id = 11`), [{ n: 0 }]);
});

test('-pooler over WebSocket: BEGIN/INSERT/COMMIT in one session through PgBouncer', { timeout: 60_000 }, async () => {
  const direct = await wsClient(urlFor(A));
  assert.deepStrictEqual((await direct.query(WHO)).rows, [{ client_addr: '127.0.0.1', server_port: portOf(A.addresses.direct) }]);
  const c = await wsClient(urlFor(A, { pooler: true }));
  await c.query('BEGIN');
  await c.query(`INSERT INTO ${T} VALUES (12, $1, 'ws-pooler')`, [A.id]);
  assert.deepStrictEqual((await c.query(WHO)).rows, [{ client_addr: null, server_port: null }], 'through PgBouncer');
  assert.deepStrictEqual((await direct.query(`SELECT count(*)::int AS n FROM ${T} WHERE id = 12`)).rows, [{ n: 0 }], 'not visible before COMMIT');
  await c.query('COMMIT');
  assert.deepStrictEqual((await direct.query(`SELECT via FROM ${T} WHERE id = 12`)).rows, [{ via: 'ws-pooler' }], 'visible after COMMIT');
  await c.end();
  await direct.end();
});

test('-pooler over TCP (options=endpoint=<id>-pooler): a transaction through PgBouncer', { timeout: 60_000 }, async () => {
  const direct = await tcpClient(tcpConfig(A));
  assert.deepStrictEqual((await direct.query(WHO)).rows, [{ client_addr: '127.0.0.1', server_port: portOf(A.addresses.direct) }]);
  const c = await tcpClient(tcpConfig(A, { pooler: true }));
  await c.query('BEGIN');
  await c.query(`INSERT INTO ${T} VALUES (13, $1, 'tcp-pooler')`, [A.id]);
  assert.deepStrictEqual((await c.query(WHO)).rows, [{ client_addr: null, server_port: null }], 'through PgBouncer');
  await c.query('COMMIT');
  assert.deepStrictEqual((await direct.query(`SELECT via FROM ${T} WHERE id = 13`)).rows, [{ via: 'tcp-pooler' }]);
  await c.end();
  await direct.end();
});

// ---------------------------------------------------------------------------
// Warm path: no control-plane calls once the gateway knows an endpoint
// ---------------------------------------------------------------------------

test('warm path: 50 HTTP queries, 50 WebSocket and 20 TCP sessions make zero control-plane calls', { timeout: 180_000 }, async () => {
  // A fresh endpoint, so that the gateway learns its route and role secret right here: the
  // gateway refreshes a route in the background once it is --route-refresh-seconds old.
  C.addresses = (await api.create(C.id, { suspend_timeout_seconds: -1 })).addresses;
  await api.createRole(C.id, C.role, C.password);
  const sql = neon(urlFor(C));
  assert.deepStrictEqual(await sql`SELECT 1 AS warm`, [{ warm: 1 }]);
  const first = await wsClient(urlFor(C));
  await first.query('SELECT 1');
  await first.end();
  const firstTcp = await tcpClient(tcpConfig(C));
  await firstTcp.query('SELECT 1');
  await firstTcp.end();

  // wait until the counters stand still (nothing in flight), then count
  let before = await controlPlaneCalls(api);
  for (let i = 0; i < 20; i++) {
    await sleep(200);
    const again = await controlPlaneCalls(api);
    if (JSON.stringify(again) === JSON.stringify(before)) break;
    before = again;
  }
  assert.ok(before.wake_compute >= 1 && before.access_control >= 1, `the gateway does use the control plane: ${JSON.stringify(before)}`);

  const started = Date.now();
  for (let i = 0; i < 50; i++) assert.deepStrictEqual(await sql`SELECT ${i}::int AS i`, [{ i }]);
  for (let i = 0; i < 50; i++) {
    const c = await wsClient(urlFor(C));
    assert.deepStrictEqual((await c.query('SELECT $1::int AS i', [i])).rows, [{ i }]);
    await c.end();
  }
  for (let i = 0; i < 20; i++) {
    const c = await tcpClient(tcpConfig(C));
    assert.deepStrictEqual((await c.query('SELECT $1::int AS i', [i])).rows, [{ i }]);
    await c.end();
  }
  const took = Date.now() - started;
  const afterCalls = await controlPlaneCalls(api);
  assert.deepStrictEqual(afterCalls, before, `wake_compute and get_endpoint_access_control calls before and after (${took} ms of traffic)`);
  assert.ok(took < 25_000, `the warm traffic took ${took} ms; it must fit well inside the gateway's route refresh interval`);
});

test('herd: 500 concurrent first queries on an endpoint the gateway has not seen make one wake_compute', { timeout: 180_000 }, async () => {
  await api.create(D.id, { suspend_timeout_seconds: -1 });
  await api.createRole(D.id, D.role, D.password);
  const before = await controlPlaneCalls(api);
  const sql = neon(urlFor(D));
  const results = await Promise.allSettled(
    Array.from({ length: 500 }, (_, i) => sql`SELECT ${i}::int AS i`),
  );
  const failed = results.filter((r) => r.status === 'rejected');
  assert.deepStrictEqual(
    failed.slice(0, 3).map((r) => String(r.reason)),
    [],
    `${failed.length} of 500 concurrent first queries failed`,
  );
  results.forEach((r, i) => assert.deepStrictEqual(r.value, [{ i }]));
  const afterCalls = await controlPlaneCalls(api);
  assert.equal(afterCalls.wake_compute - before.wake_compute, 1, 'one wake_compute for 500 concurrent first queries');
  assert.equal(afterCalls.access_control - before.access_control, 1, 'one secret lookup for 500 concurrent first queries');
});

test('the proxy token (what the gateway holds) opens /proxy/api/v1 only, never /v1', { timeout: 30_000 }, async () => {
  const proxyToken = requireEnv('WAKE_PROXY_TOKEN');
  const get = (path) => fetch(WAKE_URL + path, { headers: { authorization: `Bearer ${proxyToken}` } });
  const wake = await get('/proxy/api/v1/wake_compute?endpointish=db');
  assert.equal(wake.status, 200, await wake.text());
  for (const path of ['/v1/endpoints', '/v1/endpoints/db']) {
    const r = await get(path);
    assert.equal(r.status, 401, `${path} with the proxy token`);
  }
  const del = await fetch(`${WAKE_URL}/v1/endpoints/db`, { method: 'DELETE', headers: { authorization: `Bearer ${proxyToken}` } });
  assert.equal(del.status, 401, 'DELETE with the proxy token');
});

// ---------------------------------------------------------------------------
// Errors of the REST API
// ---------------------------------------------------------------------------

/** Every /v1 route, with a body that would be valid. */
function v1Routes(id) {
  return [
    ['GET', '/v1/endpoints'],
    ['POST', '/v1/endpoints', { id: MUST_NOT_EXIST[0] }],
    ['GET', `/v1/endpoints/${id}`],
    ['PATCH', `/v1/endpoints/${id}`, { suspend_timeout_seconds: 60 }],
    ['DELETE', `/v1/endpoints/${id}`],
    ['POST', `/v1/endpoints/${id}/roles`, { name: 'sdkt_nobody', password: 'secret-password' }],
    ['POST', `/v1/endpoints/${id}/databases`, { name: 'sdkt_nodb', owner: 'sdkt_nobody' }],
    ['POST', `/v1/endpoints/${id}/wake`],
    ['POST', `/v1/endpoints/${id}/suspend?force=true`],
  ];
}

test('API errors: 401 without a token or with a wrong one, on every /v1 route', { timeout: 60_000 }, async () => {
  const codes = new Set();
  for (const [method, path, body] of v1Routes(A.id)) {
    for (const [label, opts] of [
      ['no token', { token: null }],
      ['wrong token', { token: 'x'.repeat(WAKE_ADMIN_TOKEN.length) }],
      ['token with a suffix', { token: WAKE_ADMIN_TOKEN + 'x' }],
      ['Basic scheme', { token: null, headers: { authorization: `Basic ${Buffer.from('admin:' + WAKE_ADMIN_TOKEN).toString('base64')}` } }],
    ]) {
      const err = assertApiError(await api.call(method, path, { body, ...opts }), 401, `${method} ${path} (${label})`);
      codes.add(err.code);
    }
  }
  assert.equal(codes.size, 1, `one error code for 401: ${[...codes]}`);
  // nothing happened: A is still active and nothing was created
  assertActive(await api.expect(200, 'GET', `/v1/endpoints/${A.id}`), A.id, 'after refused requests');
  assert.equal((await api.endpoint(MUST_NOT_EXIST[0])).status, 404);
});

test('API errors: 404 for an unknown endpoint on every /v1/endpoints/{id} route', { timeout: 60_000 }, async () => {
  const nope = `nope-${RUN}`;
  for (const [method, path, body] of v1Routes(nope).filter(([, p]) => p.includes(nope))) {
    const err = assertApiError(await api.call(method, path, { body }), 404, `${method} ${path}`);
    assert.ok(err.message.includes(nope), `${method} ${path}: the message names the endpoint: ${err.message}`);
  }
  assert.equal((await api.endpoint(nope)).status, 404, 'and nothing created it');
});

test('API errors: 409 for a duplicate endpoint, role and database', { timeout: 60_000 }, async () => {
  for (const [label, path, body, name] of [
    ['endpoint', '/v1/endpoints', { id: A.id }, A.id],
    ['default endpoint', '/v1/endpoints', { id: 'db' }, 'db'],
    ['role', `/v1/endpoints/${A.id}/roles`, { name: A.role, password: 'another-password' }, A.role],
    ['database', `/v1/endpoints/${A.id}/databases`, { name: A.database, owner: A.role }, A.database],
  ]) {
    const err = assertApiError(await api.call('POST', path, { body }), 409, `duplicate ${label}`);
    assert.ok(err.message.includes(name), `duplicate ${label}: the message names it: ${err.message}`);
  }
  // the duplicate role did not change A's password
  assert.deepStrictEqual(await neon(urlFor(A))`SELECT 1 AS ok`, [{ ok: 1 }]);
  assertActive(await api.expect(200, 'GET', `/v1/endpoints/${A.id}`), A.id, 'after the duplicates');
});

test('API errors: 422 for invalid names, an owner that is no role, and out-of-range settings', { timeout: 60_000 }, async () => {
  const cases = [
    ['endpoint id Bad_Id', 'POST', '/v1/endpoints', { id: 'Bad_Id' }, 'Bad_Id'],
    ['endpoint id ending in -pooler', 'POST', '/v1/endpoints', { id: `cp-${RUN}-pooler` }, '-pooler'],
    ['endpoint id of 64 characters', 'POST', '/v1/endpoints', { id: 'a'.repeat(64) }],
    ['role name pg_x', 'POST', `/v1/endpoints/${A.id}/roles`, { name: 'pg_x', password: 'secret-password' }, 'pg_x'],
    ['role name cloud_admin', 'POST', `/v1/endpoints/${A.id}/roles`, { name: 'cloud_admin', password: 'secret-password' }, 'cloud_admin'],
    ['role with an empty password', 'POST', `/v1/endpoints/${A.id}/roles`, { name: 'sdkt_empty_pw', password: '' }, 'password'],
    ['database name 1x', 'POST', `/v1/endpoints/${A.id}/databases`, { name: '1x', owner: A.role }, '1x'],
    ['database name with a quote', 'POST', `/v1/endpoints/${A.id}/databases`, { name: 'x"; DROP', owner: A.role }],
    ['database owner that is not a role', 'POST', `/v1/endpoints/${A.id}/databases`, { name: 'sdkt_orphan', owner: 'sdkt_no_such_role' }, 'sdkt_no_such_role'],
    ['database owner that is a role of another endpoint', 'POST', `/v1/endpoints/${A.id}/databases`, { name: 'sdkt_orphan', owner: B.role }, B.role],
    ['suspend_timeout_seconds too large', 'POST', '/v1/endpoints', { id: MUST_NOT_EXIST[1], suspend_timeout_seconds: 604_801 }, 'suspend_timeout_seconds'],
    ['suspend_timeout_seconds -2', 'POST', '/v1/endpoints', { id: MUST_NOT_EXIST[1], suspend_timeout_seconds: -2 }, 'suspend_timeout_seconds'],
    ['min_cu > max_cu', 'POST', '/v1/endpoints', { id: MUST_NOT_EXIST[2], min_cu: 2, max_cu: 1 }, 'min_cu'],
    ['max_cu above 16', 'POST', '/v1/endpoints', { id: MUST_NOT_EXIST[2], max_cu: 32 }, 'max_cu'],
    ['min_cu not a multiple of 0.25', 'POST', '/v1/endpoints', { id: MUST_NOT_EXIST[3], min_cu: 0.3 }, 'min_cu'],
    ['PATCH suspend_timeout_seconds out of range', 'PATCH', `/v1/endpoints/${A.id}`, { suspend_timeout_seconds: 10_000_000 }, 'suspend_timeout_seconds'],
    ['PATCH min_cu > max_cu', 'PATCH', `/v1/endpoints/${A.id}`, { min_cu: 4, max_cu: 1 }, 'min_cu'],
    ['PATCH min_cu above the current max_cu', 'PATCH', `/v1/endpoints/${A.id}`, { min_cu: 8 }, 'min_cu'],
  ];
  const codes = new Set();
  for (const [label, method, path, body, mention] of cases) {
    const err = assertApiError(await api.call(method, path, { body }), 422, label);
    if (mention) assert.ok(err.message.includes(mention), `${label}: the message mentions ${mention}: ${err.message}`);
    codes.add(err.code);
  }
  assert.equal(codes.size, 1, `one error code for 422: ${[...codes]}`);
  for (const id of MUST_NOT_EXIST) assert.equal((await api.endpoint(id)).status, 404, `${id} was not created`);
  const a = await api.expect(200, 'GET', `/v1/endpoints/${A.id}`);
  assert.equal(a.suspend_timeout_seconds, 900, 'refused PATCHes changed nothing');
  assert.equal(a.max_cu, 2, 'refused PATCHes changed nothing');
  assert.deepStrictEqual(a.roles, [A.role], 'refused roles were not created');
  assert.deepStrictEqual(a.databases.map((d) => d.name), [A.database], 'refused databases were not created');
});

test('API errors: 400 for malformed JSON, missing and unknown fields, wrong types, bad query strings', { timeout: 60_000 }, async () => {
  const cases = [
    ['malformed JSON', 'POST', '/v1/endpoints', { raw: '{"id": ' }],
    ['not an object', 'POST', '/v1/endpoints', { raw: '[1, 2]' }],
    ['empty body', 'POST', '/v1/endpoints', { raw: '' }],
    ['no content-type', 'POST', '/v1/endpoints', { raw: JSON.stringify({ id: MUST_NOT_EXIST[3] }), contentType: null }],
    ['text/plain', 'POST', '/v1/endpoints', { raw: JSON.stringify({ id: MUST_NOT_EXIST[3] }), contentType: 'text/plain' }],
    ['missing id', 'POST', '/v1/endpoints', { body: {} }],
    ['unknown field on create', 'POST', '/v1/endpoints', { body: { id: MUST_NOT_EXIST[3], bogus: 1 } }],
    ['id of the wrong type', 'POST', '/v1/endpoints', { body: { id: 5 } }],
    ['suspend timeout of the wrong type', 'POST', '/v1/endpoints', { body: { id: MUST_NOT_EXIST[3], suspend_timeout_seconds: 'soon' } }],
    ['unknown field on PATCH', 'PATCH', `/v1/endpoints/${A.id}`, { body: { bogus: true } }],
    ['malformed JSON on PATCH', 'PATCH', `/v1/endpoints/${A.id}`, { raw: '{' }],
    ['role without password', 'POST', `/v1/endpoints/${A.id}/roles`, { body: { name: 'sdkt_nopw' } }],
    ['role with an unknown field', 'POST', `/v1/endpoints/${A.id}/roles`, { body: { name: 'sdkt_su', password: 'pw-pw-pw-pw', superuser: true } }],
    ['database without owner', 'POST', `/v1/endpoints/${A.id}/databases`, { body: { name: 'sdkt_noowner' } }],
    ['database with an unknown field', 'POST', `/v1/endpoints/${A.id}/databases`, { body: { name: 'sdkt_x', owner: A.role, template: 'template0' } }],
    ['suspend with force=maybe', 'POST', `/v1/endpoints/${A.id}/suspend?force=maybe`, {}],
  ];
  const codes = new Set();
  for (const [label, method, path, opts] of cases) {
    const err = assertApiError(await api.call(method, path, opts), 400, label);
    codes.add(err.code);
  }
  assert.equal(codes.size, 1, `one error code for 400: ${[...codes]}`);
  for (const id of MUST_NOT_EXIST) assert.equal((await api.endpoint(id)).status, 404, `${id} was not created`);
  const a = await api.expect(200, 'GET', `/v1/endpoints/${A.id}`);
  assertActive(a, A.id, 'after malformed requests (the suspend with force=maybe did not suspend)');
  assert.deepStrictEqual(a.roles, [A.role]);
});

test('API errors: unknown routes are a JSON 404, wrong methods a JSON 405', { timeout: 30_000 }, async () => {
  for (const [method, path] of [
    ['GET', '/v1/nothing'],
    ['GET', '/v2/endpoints'],
    ['GET', `/v1/endpoints/${A.id}/nothing`],
    ['POST', '/nothing'],
    ['GET', '/'],
  ]) {
    assertApiError(await api.call(method, path), 404, `${method} ${path}`);
  }
  for (const [method, path] of [
    ['PUT', '/v1/endpoints'],
    ['DELETE', '/v1/endpoints'],
    ['POST', `/v1/endpoints/${A.id}`],
    ['GET', `/v1/endpoints/${A.id}/roles`],
    ['GET', `/v1/endpoints/${A.id}/wake`],
    ['DELETE', `/v1/endpoints/${A.id}/suspend`],
    ['POST', '/proxy/api/v1/wake_compute'],
  ]) {
    assertApiError(await api.call(method, path), 405, `${method} ${path}`);
  }
  assertActive(await api.expect(200, 'GET', `/v1/endpoints/${A.id}`), A.id, 'after wrong methods');
});

// ---------------------------------------------------------------------------
// The Neon-compatible proxy API and /openapi.json
// ---------------------------------------------------------------------------

test('proxy API: answers in Neon\'s shapes, and its errors too', { timeout: 60_000 }, async () => {
  const base = '/proxy/api/v1';
  const wake = await api.expect(200, 'GET', `${base}/wake_compute?endpointish=${A.id}&session_id=00000000-0000-0000-0000-000000000000&application_name=sdk-tests`);
  assert.equal(wake.address, A.addresses.direct, 'wake_compute: the direct address');
  assert.equal(wake.server_name, null);
  assert.equal(wake.aux.endpoint_id, A.id);
  assert.equal(wake.aux.cold_start_info, 'warm', 'the compute was running');
  for (const field of ['project_id', 'branch_id', 'compute_id']) assert.equal(typeof wake.aux[field], 'string', `aux.${field}`);
  const pooler = await api.expect(200, 'GET', `${base}/wake_compute?endpointish=${A.id}-pooler`);
  assert.equal(pooler.address, A.addresses.pooler, 'wake_compute of <id>-pooler: the pooler address');

  const access = await api.expect(200, 'GET', `${base}/get_endpoint_access_control?endpointish=${A.id}&role=${A.role}`);
  assert.match(access.role_secret, /^SCRAM-SHA-256\$\d+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$/, 'role_secret');
  assert.ok(!access.role_secret.includes(A.password), 'only a verifier');
  assert.equal(access.allowed_ips, null);
  const other = await api.expect(200, 'GET', `${base}/get_endpoint_access_control?endpointish=${B.id}&role=${A.role}`);
  assert.equal(other.role_secret, '', "A's role on B: no secret");
  const jwks = await api.expect(200, 'GET', `${base}/endpoints/${A.id}/jwks`);
  assert.deepStrictEqual(jwks, { jwks: [] });

  // the gateway's token (or the admin token) is required
  for (const path of [`${base}/wake_compute?endpointish=${A.id}`, `${base}/get_endpoint_access_control?endpointish=${A.id}&role=${A.role}`, `${base}/endpoints/${A.id}/jwks`]) {
    assertProxyError(await api.call('GET', path, { token: null }), 401, `${path} without a token`);
    assertProxyError(await api.call('GET', path, { token: 'not-the-token-at-all' }), 401, `${path} with a wrong token`);
  }
  // unknown endpoints
  for (const path of [
    `${base}/wake_compute?endpointish=nope`,
    `${base}/wake_compute?endpointish=nope-pooler`,
    `${base}/get_endpoint_access_control?endpointish=nope&role=postgres`,
    `${base}/endpoints/nope/jwks`,
  ]) {
    const body = assertProxyError(await api.call('GET', path), 404, path);
    assert.equal(body.status.details.error_info?.reason, 'ENDPOINT_NOT_FOUND', `${path}: reason`);
    assert.ok(!body.status.details.retry_info, `${path}: not worth retrying`);
  }
  // missing parameters
  for (const path of [`${base}/wake_compute`, `${base}/wake_compute?session_id=x`, `${base}/get_endpoint_access_control?endpointish=${A.id}`]) {
    assertProxyError(await api.call('GET', path), 400, path);
  }
});

test('/openapi.json (no token) describes every /v1 and /proxy/api/v1 route', { timeout: 30_000 }, async () => {
  const r = await api.call('GET', '/openapi.json', { token: null });
  assert.equal(r.status, 200, r.text);
  assert.ok(r.json, 'valid JSON');
  assert.match(String(r.json.openapi), /^3\./, 'an OpenAPI 3 document');
  const expected = {
    '/v1/endpoints': ['get', 'post'],
    '/v1/endpoints/{id}': ['get', 'patch', 'delete'],
    '/v1/endpoints/{id}/roles': ['post'],
    '/v1/endpoints/{id}/roles/{name}': ['patch', 'delete'],
    '/v1/endpoints/{id}/databases': ['post'],
    '/v1/endpoints/{id}/wake': ['post'],
    '/v1/endpoints/{id}/suspend': ['post'],
    '/v1/endpoints/{id}/resize': ['post'],
    '/v1/endpoints/{id}/events': ['get'],
    '/v1/endpoints/{id}/usage': ['get'],
    '/v1/usage': ['get'],
    '/v1/usage/events': ['get'],
    '/proxy/api/v1/wake_compute': ['get'],
    '/proxy/api/v1/activity': ['post'],
    '/proxy/api/v1/get_endpoint_access_control': ['get'],
    '/proxy/api/v1/endpoints/{id}/jwks': ['get'],
  };
  for (const [path, methods] of Object.entries(expected)) {
    assert.ok(r.json.paths?.[path], `paths has ${path}`);
    for (const m of methods) assert.ok(r.json.paths[path][m], `paths[${path}] has ${m}`);
  }
  // and nothing it lists is a route the service does not have
  for (const path of Object.keys(r.json.paths)) {
    if (!path.startsWith('/v1/') && !path.startsWith('/proxy/')) continue;
    const concrete = path.replace('{id}', A.id);
    for (const m of Object.keys(r.json.paths[path])) {
      if (!['get', 'post', 'patch', 'delete', 'put'].includes(m)) continue;
      const res = await api.call(m.toUpperCase(), concrete, { token: null });
      assert.notEqual(res.status, 404, `${m.toUpperCase()} ${path} is documented but not routed`);
      assert.notEqual(res.status, 405, `${m.toUpperCase()} ${path} is documented but not routed`);
    }
  }
});

// ---------------------------------------------------------------------------
// The operator CLI
// ---------------------------------------------------------------------------

test('CLI: `endpoints list` prints JSON with db; `endpoints get nope` fails', { timeout: 60_000 }, async () => {
  const env = { ...process.env };
  delete env.WAKE_ADMIN_TOKEN_FILE;
  const list = await run(WAKE_BIN, ['endpoints', 'list', '--url', WAKE_URL, '--token', WAKE_ADMIN_TOKEN], { env });
  assert.equal(list.code, 0, `endpoints list exited ${list.code}: ${list.stderr}`);
  const parsed = JSON.parse(list.stdout);
  assert.ok(Array.isArray(parsed), 'a JSON array');
  assert.ok(parsed.some((e) => e.id === 'db' && e.state), `db is listed: ${list.stdout.slice(0, 500)}`);
  assert.ok(parsed.some((e) => e.id === A.id), `${A.id} is listed`);

  const get = await run(WAKE_BIN, ['endpoints', 'get', A.id, '--url', WAKE_URL, '--token', WAKE_ADMIN_TOKEN], { env });
  assert.equal(get.code, 0, get.stderr);
  assert.equal(JSON.parse(get.stdout).id, A.id);

  const nope = await run(WAKE_BIN, ['endpoints', 'get', 'nope', '--url', WAKE_URL, '--token', WAKE_ADMIN_TOKEN], { env });
  assert.notEqual(nope.code, 0, 'endpoints get nope must fail');
  assert.match(nope.stderr, /nope/, `the error names the endpoint: ${nope.stderr}`);
  assert.equal(nope.stdout.trim(), '', 'nothing on stdout');

  const badToken = await run(WAKE_BIN, ['endpoints', 'list', '--url', WAKE_URL, '--token', 'x'.repeat(20)], { env });
  assert.notEqual(badToken.code, 0, 'a wrong token fails');
  assert.match(badToken.stderr, /401|token/i, badToken.stderr);
});

// ---------------------------------------------------------------------------
// DELETE
// ---------------------------------------------------------------------------

test('DELETE: 204, then 404; the compute stops accepting connections; the gateway refuses the endpoint', { timeout: 120_000 }, async () => {
  for (const ep of [A, B, C]) {
    const r = await api.call('DELETE', `/v1/endpoints/${ep.id}`);
    assert.equal(r.status, 204, `DELETE ${ep.id}: ${r.text}`);
    assert.equal(r.text, '', 'no body');
    assertApiError(await api.endpoint(ep.id), 404, `GET ${ep.id} after DELETE`);
    assertApiError(await api.call('DELETE', `/v1/endpoints/${ep.id}`), 404, `DELETE ${ep.id} again`);
    for (const address of [ep.addresses.direct, ep.addresses.pooler]) {
      assert.equal(await accepts(address), false, `${address} (of ${ep.id}) no longer accepts connections`);
    }
    assert.ok(!(await api.endpoints()).some((e) => e.id === ep.id), `${ep.id} is no longer listed`);
  }
  // through the gateway, a deleted endpoint fails (quickly), however warm it was
  for (const ep of [A, B, C]) {
    const started = Date.now();
    const err = await captureError(() => neon(urlFor(ep))`SELECT 1`);
    assert.ok(err instanceof NeonDbError, `HTTP to deleted ${ep.id}: ${err}`);
    assert.ok(Date.now() - started < 15_000, `took ${Date.now() - started} ms`);
    const wsErr = await wsFailure(urlFor(ep));
    assert.ok(wsErr.message, `WebSocket to deleted ${ep.id}: ${wsErr}`);
  }
  // the default endpoint is untouched
  assertActive(await api.expect(200, 'GET', '/v1/endpoints/db'), 'db', 'db after the deletes');
});
