// Scale-to-zero on the main stack, with real processes and the real driver:
//   - an endpoint with a 1 s suspend timeout goes `suspended` when idle: its postmaster exits,
//     its PgBouncer stays up (paused), the API, the events and the metrics say so;
//   - an open idle WebSocket session, and an idle-in-transaction backend, keep it active;
//   - the next HTTP query, WebSocket session and TCP connection, direct and `-pooler`, each
//     wake it and succeed, as does a client connected straight to its PgBouncer;
//   - queries arriving while a suspend runs all succeed; a long-running query is never cut;
//   - 500 concurrent first queries on a suspended endpoint start it once.
// Restarts of the wake service while suspended or resuming are in restart.test.js.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Client } from '@neondatabase/serverless';
import { neon, neonConfig, pg, requireEnv, GATEWAY_HOST, GATEWAY_PORT, captureError } from './helpers.js';
import { WakeApi, accepts, poll, processes, programOf, promSum, sleep } from './stack.js';

const WAKE_URL = requireEnv('WAKE_URL').replace(/\/+$/, '');
const api = new WakeApi(WAKE_URL, requireEnv('WAKE_ADMIN_TOKEN'));

neonConfig.useSecureWebSocket = false;
neonConfig.wsProxy = (host, port) => `${GATEWAY_HOST}:${GATEWAY_PORT}/v2?address=${host}:${port}`;

const RUN = `${process.pid.toString(36)}${randomBytes(3).toString('hex')}`;
const created = [];
const opened = [];

after(async () => {
  // end() of a client that already ended never settles: skip those.
  for (const c of opened) if (!c._ending) await c.end().catch(() => {});
  for (const id of created) {
    const status = await api.remove(id);
    if (status !== 204 && status !== 404) console.error(`cleanup: DELETE ${id} answered ${status}`);
  }
});

/** Creates an endpoint with a role and a database it owns. */
async function endpoint(name, settings = { suspend_timeout_seconds: 1 }) {
  const ep = {
    id: `sz-${name}-${RUN}`,
    role: `sdkt_sz_${RUN}`,
    password: randomBytes(12).toString('base64url'),
    database: `sdkt_szdb_${RUN}`,
  };
  created.push(ep.id);
  // Set up with suspend off, so a slow setup never races the test's short timeout.
  ep.addresses = (await api.create(ep.id, { ...settings, suspend_timeout_seconds: -1 })).addresses;
  await api.createRole(ep.id, ep.role, ep.password);
  await api.createDatabase(ep.id, ep.database, ep.role);
  if (settings.suspend_timeout_seconds !== undefined && settings.suspend_timeout_seconds !== -1) {
    await api.expect(200, 'PATCH', `/v1/endpoints/${ep.id}`, { body: { suspend_timeout_seconds: settings.suspend_timeout_seconds } });
    // Fresh activity: the idle clock starts now, not when the endpoint was created.
    await neon(url(ep))`SELECT 1`;
  }
  return ep;
}

function url(ep, { pooler = false } = {}) {
  return `postgres://${ep.role}:${encodeURIComponent(ep.password)}@${ep.id}${pooler ? '-pooler' : ''}.localtest.me:${GATEWAY_PORT}/${ep.database}`;
}

/** node-postgres settings straight to the endpoint's Postgres or PgBouncer (no gateway). */
function straight(ep, address) {
  const [host, port] = address.split(':');
  return { host, port: Number(port), user: ep.role, password: ep.password, database: ep.database };
}

function tcpConfig(ep, { pooler = false } = {}) {
  return {
    host: GATEWAY_HOST,
    port: GATEWAY_PORT,
    user: ep.role,
    password: ep.password,
    database: ep.database,
    options: `endpoint=${ep.id}${pooler ? '-pooler' : ''}`,
  };
}

/** A driver WebSocket client, connected. */
async function wsClient(ep, opts) {
  const c = new Client({ connectionString: url(ep, opts) });
  c.on('error', () => {});
  opened.push(c);
  await c.connect();
  return c;
}

/** A node-postgres client, connected to `config`. */
async function pgClient(config) {
  const c = new pg.Client(config);
  c.on('error', () => {});
  opened.push(c);
  await c.connect();
  return c;
}

async function state(ep) {
  const r = await api.endpoint(ep.id);
  assert.equal(r.status, 200, r.text);
  return r.json;
}

/** Waits until the endpoint is suspended (by the scheduler); the endpoint. */
async function suspended(ep, what = 'idle suspend', timeoutMs = 30_000) {
  return poll(async () => {
    const e = await state(ep);
    return e.state === 'suspended' && e.operation == null ? e : null;
  }, `${ep.id} suspended (${what})`, { timeoutMs, intervalMs: 100 });
}

/** The postmasters of an endpoint (postgres processes whose parent is not one of them). */
function postmasters(ep) {
  const all = processes().filter((p) => programOf(p) === 'postgres' && (p.cwd ?? '').endsWith(`/computes/${ep.id}/pgdata`));
  const pids = new Set(all.map((p) => p.pid));
  return all.filter((p) => !pids.has(p.ppid));
}

function pgbouncers(ep) {
  return processes().filter((p) => programOf(p) === 'pgbouncer' && p.args.some((a) => a.includes(`/computes/${ep.id}/pgbouncer/`)));
}

async function events(ep) {
  return api.expect(200, 'GET', `/v1/endpoints/${ep.id}/events`);
}

const count = (list, kind) => list.filter((e) => e.kind === kind).length;

test('an idle endpoint (1 s timeout) suspends: Postgres exits, PgBouncer stays, API, events and metrics say so', { timeout: 120_000 }, async () => {
  const ep = await endpoint('idle');
  const sql = neon(url(ep));
  assert.deepStrictEqual(await sql`SELECT 1 AS one`, [{ one: 1 }]);
  assert.equal(postmasters(ep).length, 1, 'one postmaster while active');
  const before = await api.metrics();
  const queried = Date.now();

  const e = await suspended(ep);
  assert.ok(Date.now() - queried >= 1000, 'not before the timeout');
  assert.equal(postmasters(ep).length, 0, 'no postmaster once suspended: its memory and CPU are released');
  assert.equal(await accepts(ep.addresses.direct, 1000), false, 'nothing listens on the Postgres port');
  assert.equal(pgbouncers(ep).length, 1, 'PgBouncer keeps running (paused)');
  assert.equal(await accepts(ep.addresses.pooler, 1000), true, 'PgBouncer accepts (and holds) clients');
  assert.ok(e.suspended_at, `suspended_at is set: ${JSON.stringify(e)}`);
  assert.ok(e.last_active, 'last_active is set');
  const idleMs = Date.parse(e.suspended_at) - Date.parse(e.last_active);
  assert.ok(idleMs >= 1000, `suspended at least 1 s after the last activity (${idleMs} ms)`);

  const log = await events(ep);
  const stop = log.findLast((x) => x.kind === 'stopped');
  assert.ok(stop, `a stopped event: ${JSON.stringify(log)}`);
  assert.equal(stop.detail, 'idle');
  assert.equal(stop.to_state, 'suspended');
  assert.ok(Date.parse(stop.at) >= Date.parse(log.find((x) => x.kind === 'started').at), 'events are in time order');

  const now = await api.metrics();
  assert.ok(promSum(now, 'wake_suspends_total', { reason: 'idle' }) > promSum(before, 'wake_suspends_total', { reason: 'idle' }), 'wake_suspends_total{reason="idle"} grew');
  assert.ok(now.includes('wake_computes_active'), 'wake_computes_active is exported');
  assert.ok(now.includes('wake_resume_seconds_bucket'), 'the resume latency histogram is exported');
});

test('an open idle WebSocket session keeps the endpoint active; after it closes the endpoint suspends', { timeout: 120_000 }, async () => {
  const ep = await endpoint('ws');
  const c = await wsClient(ep);
  assert.deepStrictEqual((await c.query('SELECT 2 AS two')).rows, [{ two: 2 }]);
  // Well past the timeout (1 s), the scheduler's checks (0.5 s) and a gateway lease (3 s).
  for (let i = 0; i < 12; i++) {
    await sleep(500); // not synchronisation: the test watches the state over time
    const e = await state(ep);
    assert.equal(e.state, 'active', `still active ${(i + 1) * 0.5} s into an idle session: ${JSON.stringify(e)}`);
  }
  assert.deepStrictEqual((await c.query('SELECT 3 AS three')).rows, [{ three: 3 }], 'the session still works');
  await c.end();
  await suspended(ep, 'after the session closed');
  assert.equal(postmasters(ep).length, 0);
});

test('an idle-in-transaction backend (straight to Postgres) keeps the endpoint active', { timeout: 120_000 }, async () => {
  const ep = await endpoint('txn', { suspend_timeout_seconds: 2 });
  const c = await pgClient(straight(ep, ep.addresses.direct));
  await c.query('BEGIN');
  await c.query('CREATE TABLE held (n int)');
  for (let i = 0; i < 10; i++) {
    await sleep(500); // not synchronisation: the test watches the state over time
    assert.equal((await state(ep)).state, 'active', `still active ${(i + 1) * 0.5} s into an idle transaction`);
  }
  await c.query('INSERT INTO held VALUES (1)');
  await c.query('COMMIT');
  assert.deepStrictEqual((await c.query('SELECT count(*)::int AS n FROM held')).rows, [{ n: 1 }], 'the transaction committed');
  await c.end();
  await suspended(ep, 'after the transaction ended');
});

test('the next HTTP query, WebSocket session and TCP connection, direct and -pooler, each wake it and succeed', { timeout: 300_000 }, async () => {
  const ep = await endpoint('wake');
  await neon(url(ep))`CREATE TABLE wakes (how text)`;
  const ways = {
    'HTTP': () => neon(url(ep))`INSERT INTO wakes VALUES ('HTTP') RETURNING how`,
    'HTTP -pooler': () => neon(url(ep, { pooler: true }))`INSERT INTO wakes VALUES ('HTTP -pooler') RETURNING how`,
    'WebSocket': async () => {
      const c = await wsClient(ep);
      try {
        return (await c.query(`INSERT INTO wakes VALUES ('WebSocket') RETURNING how`)).rows;
      } finally {
        await c.end();
      }
    },
    'WebSocket -pooler': async () => {
      const c = await wsClient(ep, { pooler: true });
      try {
        return (await c.query(`INSERT INTO wakes VALUES ('WebSocket -pooler') RETURNING how`)).rows;
      } finally {
        await c.end();
      }
    },
    'TCP': async () => {
      const c = await pgClient(tcpConfig(ep));
      try {
        return (await c.query(`INSERT INTO wakes VALUES ('TCP') RETURNING how`)).rows;
      } finally {
        await c.end();
      }
    },
    'TCP -pooler': async () => {
      const c = await pgClient(tcpConfig(ep, { pooler: true }));
      try {
        return (await c.query(`INSERT INTO wakes VALUES ('TCP -pooler') RETURNING how`)).rows;
      } finally {
        await c.end();
      }
    },
  };
  for (const [how, run] of Object.entries(ways)) {
    await suspended(ep, `before ${how}`);
    const resumesBefore = count(await events(ep), 'resume_started');
    const started = Date.now();
    assert.deepStrictEqual(await run(), [{ how }], `${how} on a suspended endpoint`);
    console.log(`# ${how}: first query on a suspended endpoint answered in ${Date.now() - started} ms`);
    const e = await state(ep);
    assert.equal(e.state, 'active', `${how} woke it`);
    assert.equal(count(await events(ep), 'resume_started') - resumesBefore, 1, `${how}: one resume`);
  }
  const rows = await neon(url(ep))`SELECT how FROM wakes ORDER BY how`;
  assert.deepStrictEqual(rows.map((r) => r.how), Object.keys(ways).sort(), 'every write landed once');
});

test('a client connected straight to PgBouncer is held across a suspend and its next query resumes the endpoint', { timeout: 120_000 }, async () => {
  const ep = await endpoint('bouncer');
  const c = await pgClient(straight(ep, ep.addresses.pooler));
  assert.deepStrictEqual((await c.query('SELECT 1 AS one')).rows, [{ one: 1 }]);
  await suspended(ep, 'idle PgBouncer client');
  assert.equal(postmasters(ep).length, 0);
  // Its connection survived (PgBouncer paused); the query waits, the endpoint resumes.
  assert.deepStrictEqual((await c.query('SELECT 2 AS two')).rows, [{ two: 2 }]);
  // PgBouncer's RESUME releases the query a moment before the wake records `active`.
  await poll(async () => (await state(ep)).state === 'active', `${ep.id} active after the pooler resume`, { timeoutMs: 10_000, intervalMs: 20 });
  const log = await events(ep);
  assert.equal(log.findLast((x) => x.kind === 'resume_started')?.detail, 'pooler', 'the pooler watch resumed it');
  // A new direct PgBouncer client on a suspended endpoint: held while logging in, then served.
  await c.end();
  await suspended(ep, 'again');
  const d = await pgClient(straight(ep, ep.addresses.pooler));
  assert.deepStrictEqual((await d.query('SELECT 3 AS three')).rows, [{ three: 3 }]);
});

test('a long-running query is never cut, and a suspend asked for meanwhile is refused', { timeout: 120_000 }, async () => {
  const ep = await endpoint('long');
  const sql = neon(url(ep));
  await sql`SELECT 1`;
  const stopsBefore = count(await events(ep), 'stopped');
  const started = Date.now();
  // The driver's query promises are lazy: then() sends it now.
  const long = sql`SELECT pg_sleep(4), 'done' AS status`.then((rows) => rows);
  // Ask for the suspend once Postgres runs the query.
  await poll(
    async () =>
      (await sql`SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(4)%' AND pid <> pg_backend_pid()`)[0].n === 1,
    'the long query runs',
    { timeoutMs: 10_000, intervalMs: 50 },
  );
  const refused = await api.call('POST', `/v1/endpoints/${ep.id}/suspend`);
  assert.equal(refused.status, 409, `suspend while a query runs: ${refused.text}`);
  assert.match(refused.json?.error?.message ?? '', /force=true/, 'the refusal says how to force it');
  assert.deepStrictEqual((await long).map((r) => r.status), ['done'], 'the long query finished');
  assert.ok(Date.now() - started >= 4000);
  const log = await events(ep);
  assert.equal(count(log, 'stopped') - stopsBefore, 0, `never stopped while the query ran: ${JSON.stringify(log.map((x) => x.kind))}`);
  await suspended(ep, 'after the long query');
});

test('queries arriving while a suspend runs all succeed', { timeout: 300_000 }, async () => {
  const ep = await endpoint('race', { suspend_timeout_seconds: -1 });
  const sql = neon(url(ep));
  await sql`CREATE TABLE hits (n int)`;
  let overlapped = 0;
  let n = 0;
  for (let round = 0; round < 12 && overlapped < 3; round++) {
    // Active (a suspend that completed last round is undone by this query), then idle long
    // enough for the gateway's lease from these queries to lapse, so the suspend can go ahead.
    await sql`SELECT 1`;
    // Not synchronisation: waits out the gateway's lease (3 report intervals), the precondition.
    await sleep(3500);
    const suspend = api.call('POST', `/v1/endpoints/${ep.id}/suspend`);
    let answered = false;
    suspend.then(() => {
      answered = true;
    });
    const queries = [];
    // A query Postgres sees before the suspend's last look is activity and steps it back (409);
    // rounds start their queries at different points so that some land after it.
    await sleep([0, 20, 40, 70][round % 4]);
    for (let i = 0; i < 10; i++) {
      await sleep(round % 3 === 0 ? 2 : 10);
      const value = n++;
      // Sent before the suspend answered: with a 200, it reached the gateway while the suspend
      // ran (a query Postgres saw before the suspend's last look would have made it a 409).
      const before = !answered;
      queries.push(
        i % 2 === 0
          ? sql`INSERT INTO hits VALUES (${value}) RETURNING n`.then((rows) => ({ value, rows, before }))
          : (async () => {
              const c = await wsClient(ep);
              try {
                const rows = (await c.query('INSERT INTO hits VALUES ($1) RETURNING n', [value])).rows;
                return { value, rows, before };
              } finally {
                await c.end();
              }
            })(),
      );
    }
    const r = await suspend;
    const results = await Promise.allSettled(queries);
    const failed = results.filter((x) => x.status === 'rejected');
    assert.deepStrictEqual(failed.map((x) => String(x.reason)), [], `round ${round}: every query succeeded (suspend answered ${r.status})`);
    for (const x of results) assert.deepStrictEqual(x.value.rows, [{ n: x.value.value }]);
    assert.ok([200, 409].includes(r.status), `round ${round}: the suspend either happened or stepped back: ${r.status} ${r.text}`);
    if (r.status === 200 && results.some((x) => x.value.before)) overlapped++;
  }
  console.log(`# ${overlapped} rounds had queries sent while a suspend that completed was running`);
  assert.ok(overlapped >= 1, 'at least one suspend completed with queries sent during it');
  const [{ hits }] = await sql`SELECT count(*)::int AS hits FROM hits`;
  assert.equal(hits, n, 'every acknowledged insert is there');
});

test('a WebSocket session that has logged in but not yet sent a query is not cut by a suspend', { timeout: 120_000 }, async () => {
  const ep = await endpoint('fresh', { suspend_timeout_seconds: -1 });
  for (let round = 0; round < 3; round++) {
    // Idle long enough that nothing older holds the endpoint (the gateway's lease lapses).
    await sleep(3500);
    // Logged in through the gateway, idle in Postgres, and (so soon) in no gateway report yet.
    // Not pipelined: the driver's default resolves connect() when the socket opens, before the
    // gateway has logged in to Postgres; this way it resolves on the gateway's ReadyForQuery.
    const c = new Client({ connectionString: url(ep) });
    c.neonConfig.pipelineConnect = false;
    c.on('error', () => {});
    opened.push(c);
    await c.connect();
    const r = await api.call('POST', `/v1/endpoints/${ep.id}/suspend`);
    assert.equal(r.status, 409, `round ${round}: a suspend steps back for the new session: ${r.status} ${r.text}`);
    assert.deepStrictEqual((await c.query('SELECT 1 AS one')).rows, [{ one: 1 }], `round ${round}: the session's first query`);
    await c.end();
  }
  const log = await events(ep);
  assert.equal(count(log, 'stopped'), 0, `never stopped under the sessions: ${JSON.stringify(log.map((x) => x.kind))}`);
});

test('herd: 500 concurrent first queries on a suspended endpoint start its compute once, and all succeed', { timeout: 180_000 }, async () => {
  const ep = await endpoint('herd');
  const sql = neon(url(ep));
  await sql`SELECT 1`;
  await suspended(ep, 'before the herd');
  const before = count(await events(ep), 'resume_started');
  const metricsBefore = await api.metrics();
  const results = await Promise.allSettled(Array.from({ length: 500 }, (_, i) => sql`SELECT ${i}::int AS i`));
  const failed = results.filter((r) => r.status === 'rejected');
  assert.deepStrictEqual(failed.slice(0, 3).map((r) => String(r.reason)), [], `${failed.length} of 500 failed`);
  results.forEach((r, i) => assert.deepStrictEqual(r.value, [{ i }]));
  assert.equal(count(await events(ep), 'resume_started') - before, 1, 'one resume for 500 concurrent first queries');
  const metricsAfter = await api.metrics();
  assert.ok(
    promSum(metricsAfter, 'wake_resume_seconds_count') > promSum(metricsBefore, 'wake_resume_seconds_count'),
    'the resume latency histogram counted it',
  );
  assert.equal(postmasters(ep).length, 1, 'exactly one postmaster');
});

test('suspend errors: an unknown endpoint is 404, a bad query string 400', { timeout: 30_000 }, async () => {
  const missing = await api.call('POST', `/v1/endpoints/sz-nope-${RUN}/suspend`);
  assert.equal(missing.status, 404, missing.text);
  const events404 = await api.call('GET', `/v1/endpoints/sz-nope-${RUN}/events`);
  assert.equal(events404.status, 404, events404.text);
  const badLimit = await api.call('GET', `/v1/endpoints/db/events?limit=0`);
  assert.equal(badLimit.status, 422, badLimit.text);
  const err = await captureError(() => neon(url({ id: `sz-nope-${RUN}`, role: 'x', password: 'y', database: 'z' }))`SELECT 1`);
  // An unknown endpoint reads exactly like a wrong password (README "Errors").
  assert.equal(err.message, "password authentication failed for user 'x'", `a query on an unknown endpoint: ${err}`);
});

test('POST /proxy/api/v1/activity (proxy token): reports land in last_active, the reply lists what is not active', { timeout: 60_000 }, async () => {
  const proxy = new WakeApi(WAKE_URL, requireEnv('WAKE_PROXY_TOKEN'));
  const ep = await endpoint('report', { suspend_timeout_seconds: -1 });
  const before = Date.parse((await state(ep)).last_active);
  // Not synchronisation: lets the clock move on, so a report's last_active is later.
  await sleep(50);
  const reply = await proxy.expect(200, 'POST', '/proxy/api/v1/activity', {
    body: {
      interval_ms: 1000,
      endpoints: [{ endpoint_id: `${ep.id}-pooler`, sessions: 1, in_flight: 0, idle_ms: 0 }],
      cached: [ep.id, `sz-gone-${RUN}`],
    },
  });
  assert.deepStrictEqual(reply.inactive, [`sz-gone-${RUN}`], 'only the unknown id is inactive');
  assert.ok(Date.parse((await state(ep)).last_active) > before, 'last_active moved to the report');
  const held = await api.call('POST', `/v1/endpoints/${ep.id}/suspend`);
  assert.equal(held.status, 409, `a reported session holds the endpoint: ${held.text}`);
  assert.match(held.json.error.message, /gateway/);
  await api.expect(200, 'POST', `/v1/endpoints/${ep.id}/suspend?force=true`);
  const after = await proxy.expect(200, 'POST', '/proxy/api/v1/activity', { body: { interval_ms: 1000, endpoints: [], cached: [ep.id] } });
  assert.deepStrictEqual(after.inactive, [ep.id], 'a suspended endpoint is reported inactive');
  for (const bad of [{ interval_ms: 1, endpoints: [] }, { endpoints: 'x' }, 'not json']) {
    const r = await proxy.call('POST', '/proxy/api/v1/activity', typeof bad === 'string' ? { raw: bad } : { body: bad });
    assert.equal(r.status, 400, `bad report ${JSON.stringify(bad)}: ${r.text}`);
    assert.equal(typeof r.json?.error, 'string', 'Neon-shaped error');
  }
  const admin = await api.call('POST', '/proxy/api/v1/activity', { body: { interval_ms: 1000, endpoints: [] } });
  assert.equal(admin.status, 200, 'the admin token works too');
  const none = await api.call('POST', '/proxy/api/v1/activity', { token: null, body: { interval_ms: 1000, endpoints: [] } });
  assert.equal(none.status, 401);
});
