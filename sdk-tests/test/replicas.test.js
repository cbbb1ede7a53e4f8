// Two gateway replicas in front of one wake service, as behind a load balancer on Railway or
// Kubernetes: a private stack (its own wake service, data dir, compute ports 22700-22899, and
// two gateway processes A and B on loopback, A with --peer-addr 127.0.0.1:<admin port>, B with
// --peer-addr auto), driven with the real
// driver (@neondatabase/serverless over HTTP and WebSocket) and node-postgres over TCP:
//   - a CancelRequest works whichever replica it lands on: a query started through A is
//     cancelled by a CancelRequest sent to B (A's key: B forwards it to A), and the other way
//     round with pg's client.cancel; keys nobody holds cancel nothing;
//   - a role's password change through the wake service's API makes the old password fail and
//     the new one work on both replicas as soon as the API answers, over /sql (a pooled
//     connection made with the old password is closed, not reused), WebSocket and TCP;
//   - deleting an endpoint makes both replicas refuse it and close their pooled connections
//     to it, and an endpoint made again under the same id, with a new password for the same
//     role name, works on both at once;
//   - a session open only on A keeps its endpoint active past its suspend timeout while B
//     reports it idle; after A is killed with SIGKILL the endpoint suspends within the lease
//     (3 report intervals) plus its suspend timeout, and B stops forwarding to A.
//
// Needs WAKE_BIN, GATEWAY_BIN and PG_BIN (see README.md); not the main stack's variables.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import ws from 'ws';
import { neon, neonConfig, Client } from '@neondatabase/serverless';
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
  promSum,
  reapUnder,
} from './stack.js';

const WAKE_BIN = needEnv('WAKE_BIN');
const GATEWAY_BIN = needEnv('GATEWAY_BIN');
const PG_BIN = needEnv('PG_BIN');
/** Compute ports of this private stack (restart.test.js and metering.test.js use 22000-22499, wrong-store.test.js 22500-22699). */
const COMPUTE_PORTS = [22700, 22899];
/** The gateways' activity report interval (their default); the wake service's lease is three. */
const INTERVAL_MS = 1000;
const LEASE_MS = 3 * INTERVAL_MS;
/** The suspend timeout of the endpoint the scale-to-zero test watches. */
const SUSPEND_S = 4;

const TOKEN = randomBytes(24).toString('hex');
const RUN = `${process.pid.toString(36)}${randomBytes(2).toString('hex')}`;
const SLEEP = 'SELECT pg_sleep(30)';

let tmp; // everything of this file: data dir and logs; removed in after()
let dataDir;
let wake; // Proc
let wakePort;
let api;
/** The two replicas: { name, port, adminPort, proc }. */
const replicas = {};
const opened = []; // clients to close in after()

/** A gateway replica (not started): its ports, and where the other reaches it (--peer-addr:
 * given, or `auto`, the address it reaches the wake service from with its admin port). */
async function replica(name, { auto = false } = {}) {
  const r = { name, port: await freePort(), adminPort: await freePort() };
  r.proc = new Proc(
    `gateway ${name}`,
    GATEWAY_BIN,
    [
      '--listen', `127.0.0.1:${r.port}`,
      '--admin-listen', `127.0.0.1:${r.adminPort}`,
      '--peer-addr', auto ? 'auto' : `127.0.0.1:${r.adminPort}`,
      '--default-endpoint', 'db',
      '--control-plane-url', `http://127.0.0.1:${wakePort}/proxy/api/v1`,
      '--activity-interval-ms', String(INTERVAL_MS),
    ],
    { env: childEnv({ GATEWAY_CONTROL_PLANE_TOKEN: TOKEN }), log: path.join(tmp, `gateway-${name}.log`) },
  );
  return r;
}

/** The connection string of `ep` through replica `r` (the port in the URL picks the replica). */
function url(ep, r, { password = ep.password } = {}) {
  return `postgres://${ep.role}:${encodeURIComponent(password)}@${ep.id}.localtest.me:${r.port}/${ep.database}`;
}

/** node-postgres over TCP to replica `r`. */
function tcpConfig(ep, r, { password = ep.password } = {}) {
  return { host: '127.0.0.1', port: r.port, user: ep.role, password, database: ep.database, options: `endpoint=${ep.id}` };
}

/** One `/sql` query through `r`. */
function sql(ep, r, text, { password } = {}) {
  return neon(url(ep, r, { password })).query(text);
}

/** A connected node-postgres client through `r`. */
async function tcpClient(ep, r, opts) {
  const c = new pg.Client(tcpConfig(ep, r, opts));
  c.on('error', () => {});
  await c.connect();
  opened.push(c);
  return c;
}

/** A driver WebSocket client through `r`, connected and past a first query (the driver
 * pipelines its startup and password: a refused login shows at the first query). */
async function wsClient(ep, r, opts) {
  const c = new Client({ connectionString: url(ep, r, opts) });
  c.on('error', () => {});
  opened.push(c);
  await c.connect();
  await c.query('SELECT 1');
  return c;
}

/** The error `fn` fails with (it must fail). */
async function failure(fn) {
  try {
    await fn();
  } catch (err) {
    return err;
  }
  assert.fail('expected a failure, but it succeeded');
}

async function metrics(r) {
  const res = await fetch(`http://127.0.0.1:${r.adminPort}/metrics`, { signal: AbortSignal.timeout(10_000) });
  assert.equal(res.status, 200);
  return res.text();
}

async function metric(r, name, labels = {}) {
  return promSum(await metrics(r), name, labels);
}

/** The tag in a gateway-issued process id (bits 23-30). */
const tagOf = (processId) => processId >>> 23;

/** A raw CancelRequest to `r` over TCP; resolves once the gateway closed the connection. */
function cancelRequest(r, processId, secretKey) {
  const packet = Buffer.alloc(16);
  packet.writeInt32BE(16, 0);
  packet.writeInt32BE(80877102, 4);
  packet.writeInt32BE(processId, 8);
  packet.writeInt32BE(secretKey, 12);
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port: r.port }, () => socket.write(packet));
    const chunks = [];
    socket.setTimeout(10_000, () => socket.destroy(new Error('the gateway did not close a CancelRequest connection')));
    socket.on('data', (d) => chunks.push(d));
    socket.on('error', reject);
    socket.on('close', () => resolve(Buffer.concat(chunks)));
  });
}

/** How many backends run `SELECT pg_sleep(30)`, seen through `c`. */
async function sleepers(c) {
  const { rows } = await c.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query = '${SLEEP}'`);
  return rows[0].n;
}

/** Starts the long query on `c`; resolves once `watcher` sees it run, with `{ running }`, the
 * query's outcome (its error; boxed, or awaiting this would wait for the query). */
async function startSleep(c, watcher) {
  const before = await sleepers(watcher);
  const running = c.query(SLEEP).then(
    () => assert.fail('the sleep was not cancelled'),
    (err) => err,
  );
  await poll(async () => (await sleepers(watcher)) === before + 1, 'the long query runs', { timeoutMs: 10_000, intervalMs: 20 });
  return { running };
}

/** An endpoint with a role and a database it owns, suspend off. */
async function endpoint(name) {
  const ep = {
    id: `${name}-${RUN}`,
    role: `sdkt_rp_${RUN}`,
    password: randomBytes(12).toString('base64url'),
    database: `sdkt_rpdb_${RUN}`,
  };
  await api.create(ep.id, { suspend_timeout_seconds: -1 });
  await api.createRole(ep.id, ep.role, ep.password);
  await api.createDatabase(ep.id, ep.database, ep.role);
  return ep;
}

/** Ends the clients the tests opened (a client whose server went away may never settle). */
async function closeOpened() {
  const clients = opened.splice(0);
  await Promise.all(clients.map((c) => (c._ending ? undefined : Promise.race([c.end().catch(() => {}), sleep(2000)]))));
}

/** Run `fn`, then close its clients; on failure, add the tails of the logs to the error. */
function withLogs(fn) {
  return async (t) => {
    try {
      await fn(t);
    } catch (err) {
      const logs = [wake?.tail(60), replicas.a?.proc.tail(40), replicas.b?.proc.tail(40)].filter(Boolean).join('\n');
      console.error(logs);
      throw err;
    } finally {
      await closeOpened();
    }
  };
}

before(async () => {
  const busy = [...listeningPorts()].filter((p) => p >= COMPUTE_PORTS[0] && p <= COMPUTE_PORTS[1]);
  assert.deepStrictEqual(busy, [], `ports ${COMPUTE_PORTS.join('-')} must be free for this file's computes`);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdkt-replicas-'));
  fs.chmodSync(tmp, 0o711); // the computes run as unprivileged users when we are root
  dataDir = path.join(tmp, 'data');
  wakePort = await freePort();
  api = new WakeApi(`http://127.0.0.1:${wakePort}`, TOKEN);
  wake = new Proc(
    'wake-service',
    WAKE_BIN,
    [
      'serve',
      '--listen', `127.0.0.1:${wakePort}`,
      '--data-dir', dataDir,
      '--compute-ports', COMPUTE_PORTS.join('-'),
      '--compute-fast',
      '--pg-bin', PG_BIN,
      '--default-endpoint', 'db',
      '--default-suspend-timeout-seconds', '-1',
      '--wake-timeout-seconds', '60',
    ],
    { env: childEnv({ WAKE_ADMIN_TOKEN: TOKEN }), log: path.join(tmp, 'wake-service.log') },
  ).start();
  await waitHttpReady(`http://127.0.0.1:${wakePort}/readyz`, wake, 180_000);
  replicas.a = await replica('a');
  replicas.b = await replica('b', { auto: true });
  const ports = [wakePort, ...Object.values(replicas).flatMap((r) => [r.port, r.adminPort])];
  assert.equal(new Set(ports).size, ports.length, 'distinct free ports');
  for (const r of Object.values(replicas)) {
    r.proc.start();
    await waitHttpReady(`http://127.0.0.1:${r.adminPort}/readyz`, r.proc, 60_000);
  }
  neonConfig.webSocketConstructor = ws;
  neonConfig.useSecureWebSocket = false;
  // The port of the connection string picks the replica, as a load balancer would.
  neonConfig.fetchEndpoint = (host, port) => `http://127.0.0.1:${port}/sql`;
  neonConfig.wsProxy = (host, port) => `127.0.0.1:${port}/v2?address=${host}:${port}`;
  // Each replica learns the other from its activity replies.
  for (const r of Object.values(replicas)) {
    await poll(async () => (await metric(r, 'gateway_peers')) === 1, `${r.name} knows its peer`, { timeoutMs: 15_000 });
  }
});

after(async () => {
  const problems = [];
  await closeOpened();
  for (const r of Object.values(replicas)) {
    const exit = await r.proc.stop('SIGTERM', 15_000);
    if (exit?.signal === 'SIGKILL' && r.name !== 'a') problems.push(`gateway ${r.name} ignored SIGTERM`);
  }
  if (wake?.running) {
    const exit = await wake.stop('SIGTERM', 90_000);
    if (exit?.signal === 'SIGKILL') problems.push('the wake service ignored SIGTERM');
  }
  if (tmp) {
    const left = await reapUnder(tmp, { pgBin: PG_BIN });
    if (left.length) problems.push(`cleanup had to stop: ${left.join(', ')}`);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  if (problems.length) console.error(`replicas.test.js cleanup: ${problems.join('; ')}`);
});

// ---------------------------------------------------------------------------

test('a CancelRequest works whichever replica it lands on; unknown keys cancel nothing', { timeout: 120_000 }, withLogs(async () => {
  const { a, b } = replicas;
  const db = { id: 'db', role: 'postgres', password: 'postgres', database: 'main' };
  const onA = await tcpClient(db, a);
  const onB = await tcpClient(db, b);
  // The key really is A's: its tag is the one A logged at start, and B holds no such session.
  const loggedTag = (r) => {
    const log = fs.readFileSync(r.proc.log, 'utf8').replace(/\x1b\[[0-9;]*m/g, '');
    return Number(/cancel_tag=(\d+)/.exec(log)?.[1]);
  };
  const [tagA, tagB] = [loggedTag(a), loggedTag(b)];
  assert.ok(Number.isInteger(tagA) && Number.isInteger(tagB), 'each replica logged its cancel tag');
  assert.equal(tagOf(onA.processID), tagA, `A's key carries A's tag (pid ${onA.processID})`);
  assert.equal(tagOf(onB.processID), tagB, `B's key carries B's tag (pid ${onB.processID})`);
  const count = async (r, outcome) => metric(r, 'gateway_cancel_requests_total', { outcome });
  const taken = async (r, outcome) => metric(r, 'gateway_peer_cancel_requests_total', { outcome });
  // The query may end (the peer cancelled it) before the gateway that forwarded it has its
  // answer and counts it: counts are awaited, briefly.
  const counted = (r, what, outcome, n) =>
    poll(async () => (await what(r, outcome)) === n, `${r.name}: ${outcome} = ${n}`, { timeoutMs: 5000, intervalMs: 20 });

  // A's query, a raw CancelRequest with A's key to B.
  let { running } = await startSleep(onA, onB);
  let started = Date.now();
  const reply = await cancelRequest(b, onA.processID, onA.secretKey);
  assert.equal(reply.length, 0, 'a CancelRequest gets no answer');
  let err = await running;
  const viaB = Date.now() - started;
  assert.equal(err.code, '57014', err.message);
  assert.ok(viaB < 3000, `cancelled through the other replica in ${viaB} ms`);
  await counted(b, count, 'peer', 1); // B forwarded it
  await counted(a, taken, 'forwarded', 1); // A took it and cancelled its session
  assert.equal(await count(b, 'forwarded'), 0, 'B held no such session');
  assert.deepStrictEqual((await onA.query('SELECT 1 AS after')).rows, [{ after: 1 }], 'the session goes on');

  // B's query, cancelled with pg's own client.cancel aimed at A.
  ({ running } = await startSleep(onB, onA));
  started = Date.now();
  new pg.Client({ host: '127.0.0.1', port: a.port }).cancel(onB, onB.activeQuery);
  err = await running;
  const viaA = Date.now() - started;
  assert.equal(err.code, '57014', err.message);
  assert.ok(viaA < 3000, `cancelled through the other replica in ${viaA} ms`);
  await counted(a, count, 'peer', 1);
  await counted(b, taken, 'forwarded', 1);
  console.log(`# cancel through the other replica: ${viaB} ms (A's query, raw CancelRequest to B), ${viaA} ms (B's query, pg client.cancel to A)`);

  // Keys nobody holds: A's pid with a wrong secret (forwarded, refused by A), a random key of
  // A's tag, a key of a tag no replica has (not forwarded). The query runs on.
  ({ running } = await startSleep(onA, onB));
  await cancelRequest(b, onA.processID, onA.secretKey ^ 0x5a5a5a5a);
  await cancelRequest(b, (tagA << 23) | randomInt(1, 1 << 23), randomInt(-(2 ** 31), 2 ** 31));
  const free = [...Array(256).keys()].find((t) => t !== tagA && t !== tagB);
  await cancelRequest(b, (free << 23) | 1, 1);
  await sleep(500);
  assert.equal(await sleepers(onB), 1, 'still running after three wrong keys');
  await counted(b, count, 'peer_no_match', 2);
  await counted(b, count, 'no_match', 1);
  await counted(a, taken, 'no_match', 2);
  await cancelRequest(a, onA.processID, onA.secretKey);
  assert.equal((await running).code, '57014');
}));

test('a password change reaches both replicas: old fails, new works, no pooled connection of the old one is reused', { timeout: 120_000 }, withLogs(async () => {
  const { a, b } = replicas;
  const ep = { id: 'db', role: `sdkt_rpr_${RUN}`, password: randomBytes(12).toString('base64url'), database: 'main' };
  await api.createRole('db', ep.role, ep.password);
  const pid = async (r, password) => (await sql(ep, r, 'SELECT pg_backend_pid() AS pid', { password }))[0].pid;
  // Each replica's /sql pool holds a connection made with the old password (reused: same pid).
  const pooled = {};
  for (const r of [a, b]) {
    pooled[r.name] = await pid(r);
    assert.equal(await pid(r), pooled[r.name], `${r.name} reuses its pooled connection`);
  }
  const open = await wsClient(ep, a); // a session open across the change

  const old = ep.password;
  const fresh = randomBytes(12).toString('base64url');
  const started = Date.now();
  await api.expect(200, 'PATCH', `/v1/endpoints/db/roles/${ep.role}`, { body: { password: fresh } });
  const took = Date.now() - started;
  assert.ok(took < 12_000, `the API answered in ${took} ms (it waits for every live gateway, at most 10 s)`);
  console.log(`# PATCH of a password returned in ${took} ms, both replicas having applied it`);

  // At once, on both replicas: the old password fails everywhere, the new one works.
  for (const r of [a, b]) {
    const http = await failure(() => sql(ep, r, 'SELECT 1', { password: old }));
    assert.match(http.message, /password authentication failed/, `${r.name} /sql: ${http.message}`);
    const wsErr = await failure(() => wsClient(ep, r, { password: old }));
    assert.equal(wsErr.code, '28P01', `${r.name} WebSocket: ${wsErr.message}`);
    const tcpErr = await failure(() => tcpClient(ep, r, { password: old }));
    assert.equal(tcpErr.code, '28P01', `${r.name} TCP: ${tcpErr.message}`);
    const now = await pid(r, fresh);
    assert.notEqual(now, pooled[r.name], `${r.name}: a new connection, not the one the old password made`);
    const c = await tcpClient(ep, r, { password: fresh });
    assert.deepStrictEqual((await c.query('SELECT current_user AS u')).rows, [{ u: ep.role }]);
    await wsClient(ep, r, { password: fresh });
  }
  // The old password's pooled connections were closed, not just set aside.
  const watcher = await tcpClient(ep, b, { password: fresh });
  await poll(
    async () => (await watcher.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ANY($1)', [Object.values(pooled)])).rows[0].n === 0,
    'the connections pooled with the old password are gone',
    { timeoutMs: 5000, intervalMs: 50 },
  );
  // A session that was open stays (as documented): only new logins need the new password.
  assert.deepStrictEqual((await open.query('SELECT 1 AS still')).rows, [{ still: 1 }]);
}));

test('deleting an endpoint reaches both replicas: refused, pooled connections closed, the id starts clean', { timeout: 180_000 }, withLogs(async () => {
  const { a, b } = replicas;
  const ep = await endpoint('rpdel');
  const idle = async (r) => metric(r, 'gateway_pool_idle_connections');
  const before = { a: await idle(a), b: await idle(b) };
  for (const r of [a, b]) {
    assert.deepStrictEqual(await sql(ep, r, 'SELECT 1 AS one'), [{ one: 1 }]);
    await poll(async () => (await idle(r)) === before[r.name] + 1, `${r.name} pools a connection to ${ep.id} (idle before: ${before[r.name]}, now: ${await idle(r)})`, { timeoutMs: 5000 });
  }

  const deleted = Date.now();
  const r = await api.call('DELETE', `/v1/endpoints/${ep.id}`);
  assert.equal(r.status, 204, r.text);
  for (const r of [a, b]) {
    await poll(async () => (await idle(r)) === before[r.name], `${r.name} closes its pooled connection to the deleted endpoint`, { timeoutMs: 3 * INTERVAL_MS + 2000 });
    const http = await failure(() => sql(ep, r, 'SELECT 1'));
    assert.match(http.message, /password authentication failed/, `${r.name} /sql answers as for any unknown endpoint: ${http.message}`);
    const wsErr = await failure(() => wsClient(ep, r));
    assert.equal(wsErr.code, '28P01', `${r.name} WebSocket: ${wsErr.message}`);
  }
  console.log(`# both replicas closed their pooled connections within ${Date.now() - deleted} ms of the DELETE`);

  // The same id again, the same role name with another password: both replicas take it at
  // once (nothing of the deleted endpoint's role secrets is left in their caches).
  const again = { ...ep, password: randomBytes(12).toString('base64url') };
  await api.create(again.id, { suspend_timeout_seconds: -1 });
  await api.createRole(again.id, again.role, again.password);
  await api.createDatabase(again.id, again.database, again.role);
  const recreated = Date.now();
  for (const r of [a, b]) {
    await poll(
      async () => (await sql(again, r, 'SELECT 2 AS two'))[0].two === 2,
      `${r.name} takes the new endpoint's password`,
      { timeoutMs: 2 * INTERVAL_MS + 5000, intervalMs: 200 },
    );
    const old = await failure(() => sql(again, r, 'SELECT 1', { password: ep.password }));
    assert.match(old.message, /password authentication failed/);
  }
  console.log(`# the endpoint made again under the same id worked on both replicas ${Date.now() - recreated} ms after it was created`);
  await api.remove(again.id);
}));

test('a session open on A holds its endpoint while B reports it idle; after kill -9 of A it suspends within lease + timeout', { timeout: 180_000 }, withLogs(async () => {
  const { a, b } = replicas;
  const ep = await endpoint('rpact');
  await api.expect(200, 'PATCH', `/v1/endpoints/${ep.id}`, { body: { suspend_timeout_seconds: SUSPEND_S } });
  // B ran a query and went idle; a third reporter claims an hour of idleness: neither may
  // shorten what A's open session holds.
  await sql(ep, b, 'SELECT 1');
  const session = await wsClient(ep, a);
  assert.deepStrictEqual((await session.query('SELECT 1 AS open')).rows, [{ open: 1 }]);
  const state = async () => (await api.expect(200, 'GET', `/v1/endpoints/${ep.id}`)).state;
  const watchUntil = Date.now() + 3 * SUSPEND_S * 1000;
  while (Date.now() < watchUntil) {
    await api.expect(200, 'POST', '/proxy/api/v1/activity', {
      body: { interval_ms: INTERVAL_MS, endpoints: [{ endpoint_id: ep.id, sessions: 0, in_flight: 0, idle_ms: 3_600_000 }] },
    });
    assert.equal(await state(), 'active', `${ep.id} stays active while A holds a session`);
    await sleep(500);
  }
  assert.equal(await metric(b, 'gateway_sessions_active'), 0, 'nothing open on B');
  assert.equal(await metric(a, 'gateway_sessions_active', { transport: 'ws' }), 1, 'the session is on A');

  await a.proc.kill();
  const killed = Date.now();
  const suspended = await poll(async () => (await state()) === 'suspended' && Date.now(), `${ep.id} suspends once A is gone`, {
    timeoutMs: LEASE_MS + SUSPEND_S * 1000 + 10_000,
    intervalMs: 100,
  });
  const took = suspended - killed;
  console.log(`# kill -9 of A: ${ep.id} suspended ${took} ms later (lease ${LEASE_MS} ms, suspend timeout ${SUSPEND_S} s)`);
  // A's last report held it for the lease and counted as activity: not before the timeout
  // (less the report interval A's last report may have preceded the kill by), and within
  // lease + timeout plus the idle check and the suspend itself.
  assert.ok(took >= SUSPEND_S * 1000 - INTERVAL_MS - 200, `suspended too early: ${took} ms`);
  assert.ok(took <= LEASE_MS + SUSPEND_S * 1000 + 3000, `suspended too late: ${took} ms`);
  // B drops A from its peers once A's reports stop for three of its intervals.
  await poll(async () => (await metric(b, 'gateway_peers')) === 0, 'B forgets A', { timeoutMs: LEASE_MS + 3 * INTERVAL_MS });
  // And B still serves, waking the endpoint.
  assert.deepStrictEqual(await sql(ep, b, 'SELECT 3 AS three'), [{ three: 3 }]);
}));
