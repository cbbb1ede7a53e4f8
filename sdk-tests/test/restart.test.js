// Crash recovery of the wake service, on a private stack (its own wake service, data dir,
// compute port range and gateway) so that killing things disturbs no other test:
//   - kill -9 of the wake service: warm endpoints keep serving through the gateway, cold
//     ones fail fast and clearly; a restart adopts the running computes (no second postmaster)
//     and loses no data;
//   - kill -9 in the middle of creating an endpoint, and of waking one: after a restart the
//     endpoint is rolled back or finished, usable, and no process or port is orphaned;
//   - SIGTERM: the wake service suspends every compute and leaves nothing running.
//
// Needs WAKE_BIN, GATEWAY_BIN and PG_BIN (see README.md); not the main stack's variables.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import ws from 'ws';
import { neon, neonConfig, NeonDbError, Client } from '@neondatabase/serverless';
import pg from 'pg';
import {
  needEnv,
  poll,
  sleep,
  freePort,
  listeningPorts,
  childEnv,
  Proc,
  WakeApi,
  waitHttpReady,
  processes,
  processesUnder,
  postmastersOf,
  pgdataOf,
  dirsWith,
  reapUnder,
  run,
} from './stack.js';

const WAKE_BIN = needEnv('WAKE_BIN');
const GATEWAY_BIN = needEnv('GATEWAY_BIN');
const PG_BIN = needEnv('PG_BIN');
/** Compute ports of this private stack: below the ephemeral range, away from `make up` (20000-20999) and `make test` (21000-21999). */
const COMPUTE_PORTS = [22000, 22499];

const TOKEN = randomBytes(24).toString('hex');
const RUN = `${process.pid.toString(36)}${randomBytes(2).toString('hex')}`;
const T = `sdkt_restart_${RUN}`;

let tmp; // everything of this file: data dir and logs; removed in after()
let dataDir;
let wake; // Proc
let gateway; // Proc
let wakePort;
let gwPort;
let gwAdminPort;
let api;

function wakeArgs() {
  return [
    'serve',
    '--listen', `127.0.0.1:${wakePort}`,
    '--data-dir', dataDir,
    '--compute-ports', COMPUTE_PORTS.join('-'),
    '--compute-fast',
    '--pg-bin', PG_BIN,
    '--default-endpoint', 'db',
    '--default-suspend-timeout-seconds', '-1',
    '--wake-timeout-seconds', '60',
  ];
}

/** (Re)start the wake service on the same port and data dir; wait for /readyz. */
async function startWake() {
  wake.start();
  await waitHttpReady(`http://127.0.0.1:${wakePort}/readyz`, wake, 180_000);
}

/** The connection string of `role` on endpoint `id` through this file's gateway. */
function url(id, { role = 'postgres', password = 'postgres', database = 'main', pooler = false } = {}) {
  return `postgres://${role}:${encodeURIComponent(password)}@${id}${pooler ? '-pooler' : ''}.localtest.me:${gwPort}/${database}`;
}

/** One query over a fresh driver WebSocket session. */
async function wsQuery(connectionString, text, values) {
  const c = new Client({ connectionString });
  c.on('error', () => {});
  try {
    await c.connect();
    return (await c.query(text, values)).rows;
  } finally {
    await c.end().catch(() => {});
  }
}

/** Await a promise that must reject; the rejection. */
async function failure(fn) {
  try {
    await fn();
  } catch (err) {
    return err;
  }
  assert.fail('expected a failure, but it succeeded');
}

const computeDir = (id) => path.join(dataDir, 'computes', id);

/** Run `fn`; on failure, add the tails of both logs to the error. */
function withLogs(fn) {
  return async (t) => {
    try {
      await fn(t);
    } catch (err) {
      const logs = [wake?.tail(80), gateway?.tail(40)].filter(Boolean).join('\n');
      console.error(logs);
      if (err && typeof err.message === 'string') {
        try {
          err.message += '\n' + logs;
        } catch {
          // read-only message
        }
      }
      throw err;
    }
  };
}

/**
 * After a restart: nothing runs under the data dir that the API does not know about, every
 * compute directory belongs to a listed endpoint, no two endpoints share a port, active
 * endpoints have exactly one postmaster and suspended ones none.
 */
async function assertConsistent(what) {
  const list = await api.endpoints();
  const ids = new Set(list.map((e) => e.id));
  const running = processesUnder(dataDir);
  const owner = (p) => path.relative(dataDir, p.where).split(path.sep);
  // the scan sees things: the embedded state store runs under the data dir
  assert.equal(postmastersOf(path.join(dataDir, 'state', 'pgdata')).length, 1, `${what}: one postmaster for the state store`);
  assert.ok(running.some((p) => owner(p)[0] === 'state'), `${what}: the scan finds the state store's processes`);
  for (const p of running) {
    const [top, id] = owner(p);
    if (top === 'state') continue;
    assert.ok(top === 'computes' && ids.has(id), `${what}: ${p.program} (pid ${p.pid}, ${p.args.join(' ')}) belongs to no listed endpoint`);
  }
  // (names starting with '.' are the driver's own, e.g. .quarantine)
  const onDisk = fs.existsSync(path.join(dataDir, 'computes')) ? fs.readdirSync(path.join(dataDir, 'computes')).filter((d) => !d.startsWith('.')) : [];
  for (const dir of onDisk) assert.ok(ids.has(dir), `${what}: computes/${dir} belongs to no listed endpoint (listed: ${[...ids]})`);
  const ports = list.flatMap((e) => [e.addresses.direct, e.addresses.pooler]);
  assert.equal(new Set(ports).size, ports.length, `${what}: every endpoint has its own ports: ${ports}`);
  for (const e of list) {
    assert.equal(e.operation ?? null, null, `${what}: no operation in progress on ${e.id}: ${JSON.stringify(e)}`);
    const port = Number(e.addresses.direct.split(':').pop());
    assert.ok(port >= COMPUTE_PORTS[0] && port <= COMPUTE_PORTS[1], `${what}: ${e.id}'s port ${port} is in the configured range`);
    const expected = e.state === 'active' ? 1 : e.state === 'suspended' ? 0 : undefined;
    assert.notEqual(expected, undefined, `${what}: ${e.id} is in a settled state: ${e.state}`);
    const pms = postmastersOf(pgdataOf(computeDir(e.id)));
    assert.equal(pms.length, expected, `${what}: postmasters of ${e.id} (${e.state}): ${JSON.stringify(pms.map((p) => p.pid))}`);
    // PgBouncer runs in both states: paused while suspended, holding its clients.
    const bouncers = running.filter((p) => p.program === 'pgbouncer' && owner(p)[1] === e.id);
    assert.equal(bouncers.length, 1, `${what}: PgBouncers of ${e.id} (${e.state}): ${JSON.stringify(bouncers.map((p) => p.pid))}`);
  }
  const stored = await assertStoreConsistent(what);
  assert.deepStrictEqual(stored.map((r) => r.id).sort(), list.map((e) => e.id).sort(), `${what}: the API lists what the store holds`);
  return list;
}

/**
 * Rows of a query on the wake service's embedded state store (Postgres on a private unix
 * socket, run as its own OS user, letting in only the wake service's user — root, as this
 * suite runs — by peer authentication): psql as ourselves. The query must return one JSON
 * value.
 */
async function stateStore(sql) {
  const pidfile = path.join(dataDir, 'state', 'pgdata', 'postmaster.pid');
  const lines = fs.readFileSync(pidfile, 'utf8').split('\n');
  const [port, socketDir] = [lines[3].trim(), lines[4].trim()];
  const psql = path.join(PG_BIN, 'psql');
  const args = ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', socketDir, '-p', port, '-U', 'cloud_admin', '-d', 'postgres', '-c', sql];
  const r = await run(psql, args);
  assert.equal(r.code, 0, `psql on the state store: ${r.stderr}`);
  return JSON.parse(r.stdout.trim());
}

/**
 * The state store agrees with itself: every endpoint's event log is a chain (each event
 * starts where the previous one ended), its last event ends in the endpoint's state, and no
 * operation is left in progress.
 */
async function assertStoreConsistent(what) {
  const rows = await stateStore(`SELECT coalesce(json_agg(x ORDER BY x.id), '[]') FROM (
      SELECT e.id, e.state, e.operation,
        (SELECT json_agg(json_build_object('kind', c.kind, 'from', c.from_state, 'to', c.to_state) ORDER BY c.id)
           FROM compute_events c WHERE c.endpoint_id = e.id) AS events
      FROM endpoints e) x`);
  assert.ok(rows.length > 0, `${what}: the state store has endpoints`);
  for (const row of rows) {
    assert.equal(row.operation, null, `${what}: ${row.id} has operation ${row.operation} in the store`);
    const events = row.events ?? [];
    assert.ok(events.length > 0, `${what}: ${row.id} has events`);
    for (let i = 1; i < events.length; i++) {
      if (events[i].from === null) continue; // a new life of a re-created id
      assert.equal(events[i].from, events[i - 1].to, `${what}: events of ${row.id} form a chain: ${JSON.stringify(events)}`);
    }
    assert.equal(events.at(-1).to, row.state, `${what}: the last event of ${row.id} ends in its state: ${JSON.stringify(events.slice(-3))}`);
  }
  return rows;
}

/** GET an endpoint until no operation is in progress; its body. */
async function settled(id, timeoutMs = 90_000) {
  return poll(
    async () => {
      const r = await api.endpoint(id);
      assert.equal(r.status, 200, `GET ${id}: ${r.text}`);
      return r.json.operation == null && ['active', 'suspended', 'failed'].includes(r.json.state) ? r.json : null;
    },
    `${id} to settle`,
    { timeoutMs, intervalMs: 200 },
  );
}

before(async () => {
  const busy = [...listeningPorts()].filter((p) => p >= COMPUTE_PORTS[0] && p <= COMPUTE_PORTS[1]);
  assert.deepStrictEqual(busy, [], `ports ${COMPUTE_PORTS.join('-')} must be free for this file's computes`);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdkt-restart-'));
  fs.chmodSync(tmp, 0o711); // the computes run as unprivileged users when we are root
  dataDir = path.join(tmp, 'data');
  wakePort = await freePort();
  gwPort = await freePort();
  gwAdminPort = await freePort();
  assert.equal(new Set([wakePort, gwPort, gwAdminPort]).size, 3, 'three distinct free ports');
  api = new WakeApi(`http://127.0.0.1:${wakePort}`, TOKEN);

  // tokens travel in the environment (command lines are visible to every user)
  wake = new Proc('wake-service', WAKE_BIN, wakeArgs(), { env: childEnv({ WAKE_ADMIN_TOKEN: TOKEN }), log: path.join(tmp, 'wake-service.log') });
  await startWake();
  gateway = new Proc(
    'gateway',
    GATEWAY_BIN,
    [
      '--listen', `127.0.0.1:${gwPort}`,
      '--admin-listen', `127.0.0.1:${gwAdminPort}`,
      '--default-endpoint', 'db',
      '--control-plane-url', `http://127.0.0.1:${wakePort}/proxy/api/v1`,
    ],
    { env: childEnv({ GATEWAY_CONTROL_PLANE_TOKEN: TOKEN }), log: path.join(tmp, 'gateway.log') },
  ).start();
  await waitHttpReady(`http://127.0.0.1:${gwAdminPort}/readyz`, gateway, 60_000);

  neonConfig.fetchEndpoint = () => `http://127.0.0.1:${gwPort}/sql`;
  neonConfig.webSocketConstructor = ws;
  neonConfig.useSecureWebSocket = false;
  neonConfig.wsProxy = (host, port) => `127.0.0.1:${gwPort}/v2?address=${host}:${port}`;
});

after(async () => {
  const problems = [];
  if (gateway) await gateway.stop('SIGTERM', 15_000);
  if (wake?.running) {
    const exit = await wake.stop('SIGTERM', 90_000);
    if (exit?.signal === 'SIGKILL') problems.push('the wake service ignored SIGTERM');
  }
  if (tmp) {
    const left = await reapUnder(tmp, { pgBin: PG_BIN });
    if (left.length) problems.push(`cleanup had to stop: ${left.join(', ')}`);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  if (problems.length) console.error(`restart.test.js cleanup: ${problems.join('; ')}`);
});

// ---------------------------------------------------------------------------

test('kill -9 of the wake service: warm db keeps serving, a cold endpoint fails fast; restart adopts db', { timeout: 300_000 }, withLogs(async () => {
  const db = await api.expect(200, 'GET', '/v1/endpoints/db');
  assert.equal(db.state, 'active');
  const pgdata = pgdataOf(computeDir('db'));
  const pmBefore = postmastersOf(pgdata);
  assert.equal(pmBefore.length, 1, 'one postmaster for db');

  // warm the gateway's caches for db (HTTP and WebSocket), and write some data
  const sql = neon(url('db'));
  await sql.query(`CREATE TABLE ${T} (id int PRIMARY KEY, note text)`);
  await sql.query(`INSERT INTO ${T} VALUES (1, 'before the kill')`);
  assert.deepStrictEqual(await wsQuery(url('db'), `SELECT note FROM ${T} WHERE id = 1`), [{ note: 'before the kill' }]);

  await wake.kill();
  assert.equal(wake.exit.signal, 'SIGKILL');

  // warm: still served, over HTTP and over a new WebSocket session
  assert.deepStrictEqual(await sql.query(`SELECT note FROM ${T} WHERE id = 1`), [{ note: 'before the kill' }], 'HTTP with the wake service down');
  await sql.query(`INSERT INTO ${T} VALUES (2, 'while the wake service was down')`);
  assert.deepStrictEqual(await wsQuery(url('db'), `SELECT count(*)::int AS n FROM ${T}`), [{ n: 2 }], 'WebSocket with the wake service down');

  // cold: an endpoint the gateway has never seen fails, quickly and clearly
  for (const [label, attempt] of [
    ['HTTP', () => neon(url(`cold-${RUN}`))`SELECT 1`],
    ['WebSocket', () => wsQuery(url(`cold-ws-${RUN}`), 'SELECT 1')],
  ]) {
    const started = Date.now();
    const err = await failure(attempt);
    const took = Date.now() - started;
    assert.ok(took < 15_000, `${label}: a cold endpoint with the control plane down took ${took} ms to fail`);
    assert.ok(typeof err.message === 'string' && err.message.length > 10, `${label}: a clear message: ${err.message}`);
    assert.doesNotMatch(err.message, /fetch failed|socket hang up|ECONNRESET|closed/i, `${label}: an error from the gateway, not a dropped connection: ${err.message}`);
    if (label === 'HTTP') assert.ok(err instanceof NeonDbError, `HTTP: a NeonDbError: ${err}`);
    console.log(`# cold endpoint, control plane down, ${label}: ${took} ms: ${err.message}`);
  }

  await startWake();
  const after = await settled('db');
  assert.equal(after.state, 'active', `db after the restart: ${JSON.stringify(after)}`);
  const pmAfter = postmastersOf(pgdata);
  assert.equal(pmAfter.length, 1, `exactly one postmaster for db: ${pmAfter.map((p) => p.pid)}`);
  assert.equal(pmAfter[0].pid, pmBefore[0].pid, 'the running postmaster was adopted, not restarted');
  assert.deepStrictEqual(
    await sql.query(`SELECT id, note FROM ${T} ORDER BY id`),
    [
      { id: 1, note: 'before the kill' },
      { id: 2, note: 'while the wake service was down' },
    ],
    'no data lost',
  );
  assert.deepStrictEqual(await wsQuery(url('db'), 'SELECT 1 AS ok'), [{ ok: 1 }]);
  // the cold endpoint now gets the ordinary answer for an unknown endpoint
  const unknown = await failure(() => neon(url(`cold-${RUN}`))`SELECT 1`);
  assert.match(unknown.message, /password authentication failed/, unknown.message);
  await assertConsistent('after the restart');
}));

for (const phase of ['directory', 'postmaster']) {
  test(`kill -9 while creating an endpoint (when its ${phase} appears): rolled back or finished, nothing orphaned`, { timeout: 300_000 }, withLogs(async () => {
    const id = `rc-${phase.slice(0, 3)}-${RUN}`;
    const dir = computeDir(id);
    let done = false;
    const creating = api.call('POST', '/v1/endpoints', { body: { id } }).then(
      (r) => {
        done = true;
        return r;
      },
      (err) => err,
    );
    const ready = phase === 'directory' ? () => fs.existsSync(dir) : () => dirsWith(dir, 'postmaster.pid', 3).length > 0;
    await poll(ready, `${id}: its ${phase}`, { timeoutMs: 60_000, intervalMs: 5 });
    await wake.kill();
    const answer = await creating;
    console.log(`# killed while creating ${id} (${phase}); the POST ${done ? `had answered ${answer.status}` : 'was cut off'}`);

    await startWake();
    const r = await api.endpoint(id);
    console.log(`# after the restart, GET ${id} answers ${r.status}${r.json?.state ? ` (${r.json.state})` : ''}`);
    if (r.status === 404) {
      assert.equal(fs.existsSync(dir), false, `${id} was rolled back but ${dir} remains`);
      assert.deepStrictEqual(processesUnder(dir), [], `${id} was rolled back but processes remain`);
    } else {
      assert.equal(r.status, 200, r.text);
      const ep = await settled(id);
      assert.equal(ep.state, 'active', `${id} after the restart: ${JSON.stringify(ep)}`);
      const role = `sdkt_rc_${RUN}`;
      const password = randomBytes(9).toString('hex');
      await api.createRole(id, role, password);
      const rows = await neon(url(id, { role, password, database: 'postgres' }))`SELECT current_user AS usr, 1 + 1 AS two`;
      assert.deepStrictEqual(rows, [{ usr: role, two: 2 }], `${id} is usable through the gateway`);
      assert.deepStrictEqual(await wsQuery(url(id, { role, password, database: 'postgres' }), 'SELECT 3 AS three'), [{ three: 3 }]);
    }
    await assertConsistent(`after a kill while creating ${id}`);
    // the id is usable either way: delete it (if it exists) and create it again, cleanly
    await api.remove(id);
    assert.equal((await api.endpoint(id)).status, 404);
    assert.equal(fs.existsSync(dir), false, `DELETE removed ${dir}`);
  }));
}

test('kill -9 while waking an endpoint: after a restart it is active (or wakes), usable, one postmaster', { timeout: 600_000 }, withLogs(async () => {
  const id = `rw-${RUN}`;
  const role = `sdkt_rw_${RUN}`;
  const password = randomBytes(9).toString('hex');
  const database = `sdkt_rwdb_${RUN}`;
  await api.create(id, { suspend_timeout_seconds: -1 });
  await api.createRole(id, role, password);
  await api.createDatabase(id, database, role);
  const conn = url(id, { role, password, database });
  const sql = neon(conn);
  await sql.query(`CREATE TABLE ${T} (n int)`);
  const pgdata = pgdataOf(computeDir(id));

  // 'operation': kill as soon as the API shows the wake in progress; numbers: ms after the POST
  for (const [round, delay] of ['operation', 50, 100, 150, 400].entries()) {
    const suspended = await api.expect(200, 'POST', `/v1/endpoints/${id}/suspend?force=true`);
    assert.equal(suspended.state, 'suspended');
    assert.equal(postmastersOf(pgdata).length, 0, `round ${round}: no postmaster once suspended`);

    let answered = false;
    const waking = api.call('POST', `/v1/endpoints/${id}/wake`).then(
      () => {
        answered = true;
      },
      () => {},
    );
    if (delay === 'operation') {
      await poll(async () => (await api.endpoint(id)).json?.operation === 'wake' || answered, `${id}: operation wake`, { timeoutMs: 30_000, intervalMs: 2 });
    } else {
      await sleep(delay);
    }
    const wasAnswered = answered;
    const pmsAtKill = postmastersOf(pgdata).length;
    await wake.kill();
    await waking;
    await startWake();

    let ep = await settled(id);
    console.log(
      `# killed ${delay === 'operation' ? 'as soon as the API showed a wake in progress' : `${delay} ms into a wake`} (${wasAnswered ? 'it had already answered' : 'still in progress'}, ` +
        `${pmsAtKill} postmaster(s) at the kill): after the restart ${id} is ${ep.state}`,
    );
    if (ep.state === 'suspended') ep = await api.expect(200, 'POST', `/v1/endpoints/${id}/wake`);
    assert.equal(ep.state, 'active', `round ${round} (${delay} ms): ${JSON.stringify(ep)}`);
    assert.equal(postmastersOf(pgdata).length, 1, `round ${round}: exactly one postmaster`);

    await sql.query(`INSERT INTO ${T} VALUES ($1)`, [round]);
    assert.deepStrictEqual(await sql.query(`SELECT count(*)::int AS n FROM ${T}`), [{ n: round + 1 }], `round ${round}: HTTP through the gateway`);
    assert.deepStrictEqual(await wsQuery(conn, `SELECT max(n) AS m FROM ${T}`), [{ m: round }], `round ${round}: WebSocket through the gateway`);
    assert.deepStrictEqual(await wsQuery(url(id, { role, password, database, pooler: true }), 'SELECT 1 AS pooled'), [{ pooled: 1 }], `round ${round}: the pooler`);
    await assertConsistent(`round ${round}`);
  }
}));

test('kill -9 while suspended: after a restart the endpoint is suspended, a client held by its paused PgBouncer is served, queries wake it', { timeout: 300_000 }, withLogs(async () => {
  const id = `rs-${RUN}`;
  const role = `sdkt_rs_${RUN}`;
  const password = randomBytes(9).toString('hex');
  const database = `sdkt_rsdb_${RUN}`;
  const ep = await api.create(id, { suspend_timeout_seconds: -1 });
  await api.createRole(id, role, password);
  await api.createDatabase(id, database, role);
  const sql = neon(url(id, { role, password, database }));
  await sql.query(`CREATE TABLE ${T}_s (n int)`);
  await sql.query(`INSERT INTO ${T}_s VALUES (1)`);
  const [host, port] = ep.addresses.pooler.split(':');
  const held = new pg.Client({ host, port: Number(port), user: role, password, database });
  held.on('error', () => {});
  await held.connect();
  try {
    assert.equal((await api.expect(200, 'POST', `/v1/endpoints/${id}/suspend?force=true`)).state, 'suspended');
    const pgdata = pgdataOf(computeDir(id));
    assert.equal(postmastersOf(pgdata).length, 0, 'no postmaster once suspended');
    await wake.kill();
    // The client's query waits in the paused PgBouncer while no wake service runs.
    let answered = false;
    const query = held.query(`SELECT count(*)::int AS n FROM ${T}_s`).then((r) => {
      answered = true;
      return r.rows;
    });
    await sleep(1500); // not synchronisation: a window in which nothing may answer
    assert.equal(answered, false, 'held by the paused PgBouncer while the wake service is down');
    assert.equal(postmastersOf(pgdata).length, 0, 'and nothing started it');
    await startWake();
    assert.deepStrictEqual(await query, [{ n: 1 }], 'released once the restarted service resumed the endpoint');
    assert.equal((await settled(id)).state, 'active');
    assert.equal(postmastersOf(pgdata).length, 1, 'exactly one postmaster');
    assert.deepStrictEqual(await sql.query(`SELECT count(*)::int AS n FROM ${T}_s`), [{ n: 1 }], 'no data lost');
    // Suspended again across a restart: the gateway's next query wakes it.
    assert.equal((await api.expect(200, 'POST', `/v1/endpoints/${id}/suspend?force=true`)).state, 'suspended');
    await wake.kill();
    await startWake();
    assert.equal((await settled(id)).state, 'suspended', 'still suspended after the restart');
    await assertConsistent('after a restart while suspended');
    assert.deepStrictEqual(await sql.query(`SELECT count(*)::int AS n FROM ${T}_s`), [{ n: 1 }], 'a query through the gateway wakes it');
  } finally {
    await held.end().catch(() => {});
  }
}));

test('SIGTERM: the wake service suspends every compute, stops its store, and leaves nothing running', { timeout: 180_000 }, withLogs(async () => {
  const list = await assertConsistent('before SIGTERM');
  assert.ok(list.some((e) => e.state === 'active'), 'something to suspend');
  // the gateway first: it holds connections to the computes
  await gateway.stop('SIGTERM', 15_000);
  const exit = await wake.stop('SIGTERM', 120_000);
  assert.equal(exit.signal, null, `the wake service exited by itself on SIGTERM: ${JSON.stringify(exit)}`);
  assert.equal(exit.code, 0, `exit status: ${JSON.stringify(exit)}`);
  const left = processesUnder(tmp, processes());
  assert.deepStrictEqual(
    left.map((p) => `${p.program} ${p.pid} ${p.where}`),
    [],
    'no Postgres or PgBouncer left running under the data dir',
  );
}));
