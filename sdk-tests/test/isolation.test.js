// Tenant isolation on the main stack (the wake service and the gateway as `make test` runs
// them, as root), each test performing an attack of issue 12 and checking it fails:
//   - a tenant role cannot escalate: no CREATEROLE, no way to `COPY … TO PROGRAM`, read or
//     write server files, become superuser or cloud_admin;
//   - a database owner's `search_path` hijack runs nothing as superuser when PgBouncer
//     (`-pooler`) authenticates a client;
//   - a shell as one endpoint's OS user (what `COPY … TO PROGRAM` would have given) cannot
//     read, connect to or signal another endpoint, the state store or the wake service;
//   - symlinks and fake pid files planted by the compute's OS user, followed by a suspend and
//     a resume, do not make the root wake service touch anything outside the compute;
//   - unauthenticated clients (unknown endpoint, unknown role, wrong password) over HTTP,
//     WebSocket and TCP wake nothing and open no backend connection, suspended or warm;
//   - a password change and a drop through the API take effect over HTTP, WebSocket, TCP and
//     `-pooler` by the time the API answers;
//   - concurrent creates of one role: exactly one wins, and its password is the one that works;
//     a role made in SQL outside the API is not taken over.
//
// Needs the main stack's variables plus WAKE_DATA_DIR and WAKE_PID (set by `make test`).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client } from '@neondatabase/serverless';
import { neon, neonConfig, NeonDbError, pg, requireEnv, GATEWAY_HOST, GATEWAY_PORT, GATEWAY_ADMIN, captureError } from './helpers.js';
import { WakeApi, promSum, run, sleep, poll } from './stack.js';

const WAKE_URL = requireEnv('WAKE_URL').replace(/\/+$/, '');
const WAKE_ADMIN_TOKEN = requireEnv('WAKE_ADMIN_TOKEN');
const WAKE_DATA_DIR = requireEnv('WAKE_DATA_DIR');
const WAKE_PID = Number(requireEnv('WAKE_PID'));
const PG_BIN = requireEnv('PG_BIN');

neonConfig.useSecureWebSocket = false;
neonConfig.wsProxy = (host, port) => `${GATEWAY_HOST}:${GATEWAY_PORT}/v2?address=${host}:${port}`;

const api = new WakeApi(WAKE_URL, WAKE_ADMIN_TOKEN);
const RUN = `${process.pid.toString(36)}${randomBytes(3).toString('hex')}`;
const secret = () => randomBytes(12).toString('base64url');

/** Two endpoints, each with an owner role and a database; manual suspend only. */
const A = { id: `iso-a-${RUN}`, role: `iso_owner_a_${RUN}`, password: secret(), database: `iso_db_a_${RUN}` };
const B = { id: `iso-b-${RUN}`, role: `iso_owner_b_${RUN}`, password: secret(), database: `iso_db_b_${RUN}` };

const opened = [];
const spawned = [];

before(async () => {
  for (const ep of [A, B]) {
    await api.create(ep.id, { suspend_timeout_seconds: -1 });
    await api.createRole(ep.id, ep.role, ep.password);
    await api.createDatabase(ep.id, ep.database, ep.role);
  }
});

after(async () => {
  for (const c of opened) await c.end().catch(() => {});
  for (const child of spawned) {
    try {
      child.kill('SIGKILL');
    } catch {
      // gone
    }
  }
  for (const ep of [A, B]) {
    const status = await api.remove(ep.id);
    if (status !== 204 && status !== 404) console.error(`cleanup: DELETE ${ep.id} answered ${status}`);
  }
});

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

function url(ep, { role = ep.role, password = ep.password, database = ep.database, pooler = false, endpoint = ep.id } = {}) {
  return `postgres://${encodeURIComponent(role)}:${encodeURIComponent(password)}@${endpoint}${pooler ? '-pooler' : ''}.localtest.me:${GATEWAY_PORT}/${database}`;
}

function tcpConfig(ep, { role = ep.role, password = ep.password, database = ep.database, pooler = false, endpoint = ep.id } = {}) {
  return {
    host: GATEWAY_HOST,
    port: GATEWAY_PORT,
    user: role,
    password,
    database,
    options: `endpoint=${endpoint}${pooler ? '-pooler' : ''}`,
    connectionTimeoutMillis: 30_000,
  };
}

/** A connected node-postgres client through the gateway's TCP port (closed in after()). */
async function tcp(ep, opts) {
  const c = new pg.Client(tcpConfig(ep, opts));
  c.on('error', () => {});
  await c.connect();
  opened.push(c);
  return c;
}

/** One query over HTTP (`neon()`); the rows. */
function http(ep, opts) {
  return neon(url(ep, opts));
}

/** One query over a fresh WebSocket session; the rows. */
async function wsQuery(ep, text, opts) {
  const c = new Client({ connectionString: url(ep, opts) });
  c.on('error', () => {});
  try {
    await c.connect();
    return (await c.query(text)).rows;
  } finally {
    await c.end().catch(() => {});
  }
}

/** A one-shot TCP query; the rows. */
async function tcpQuery(ep, text, opts) {
  const c = new pg.Client(tcpConfig(ep, opts));
  c.on('error', () => {});
  try {
    await c.connect();
    return (await c.query(text)).rows;
  } finally {
    await c.end().catch(() => {});
  }
}

/** Every way in, each running `SELECT current_user`: HTTP, WebSocket, TCP, and `-pooler` over HTTP and TCP. */
function paths(ep, opts = {}) {
  return {
    http: async () => (await http(ep, opts)`SELECT current_user AS u`)[0].u,
    ws: async () => (await wsQuery(ep, 'SELECT current_user AS u', opts))[0].u,
    tcp: async () => (await tcpQuery(ep, 'SELECT current_user AS u', opts))[0].u,
    'pooler-http': async () => (await http(ep, { ...opts, pooler: true })`SELECT current_user AS u`)[0].u,
    'pooler-tcp': async () => (await tcpQuery(ep, 'SELECT current_user AS u', { ...opts, pooler: true }))[0].u,
  };
}

/** Each path works and runs as `role`. */
async function assertAllWork(ep, opts, role, what) {
  for (const [name, attempt] of Object.entries(paths(ep, opts))) {
    assert.equal(await attempt(), role, `${what}: ${name}`);
  }
}

/** Each path fails with "password authentication failed". */
async function assertAllRefused(ep, opts, what) {
  for (const [name, attempt] of Object.entries(paths(ep, opts))) {
    const err = await captureError(attempt);
    assert.match(String(err?.message), /password authentication failed/, `${what}: ${name}: ${err?.message}`);
  }
}

/** The gateway's Prometheus text. */
async function gatewayMetrics() {
  const res = await fetch(`${GATEWAY_ADMIN}/metrics`, { signal: AbortSignal.timeout(10_000) });
  assert.equal(res.status, 200);
  return res.text();
}

async function backendConnects() {
  return promSum(await gatewayMetrics(), 'gateway_backend_connect_duration_seconds_count');
}

// ---------------------------------------------------------------------------------------
// The compute's files and OS user
// ---------------------------------------------------------------------------------------

const computeDir = (ep) => path.join(WAKE_DATA_DIR, 'computes', ep.id);

/** The OS user the endpoint's Postgres runs as (the owner of its directory). */
function osUser(ep) {
  const uid = fs.statSync(computeDir(ep)).uid;
  const line = fs
    .readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.split(':')[2] === String(uid));
  assert.ok(line, `a passwd entry for uid ${uid}`);
  return { name: line.split(':')[0], uid };
}

/** Runs a shell command as `user` (what a tenant's shell could do); `{ code, stdout, stderr }`. */
function asUser(user, command) {
  return run('runuser', ['-u', user, '--', 'sh', '-c', command], { timeoutMs: 30_000 });
}

const shellQuote = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

/** Port and socket directory of the endpoint's Postgres, from its pid file. */
function postmaster(ep) {
  const lines = fs.readFileSync(path.join(computeDir(ep), 'pgdata', 'postmaster.pid'), 'utf8').split('\n');
  return { pid: Number(lines[0]), port: Number(lines[3]), socketDir: lines[4] };
}

// ---------------------------------------------------------------------------------------
// 1. Privileges of a tenant role
// ---------------------------------------------------------------------------------------

test('a tenant role cannot escalate: no CREATEROLE, no server programs or files, no superuser', { timeout: 120_000 }, async () => {
  const c = await tcp(A);
  const me = A.role;
  const attempts = [
    [`GRANT pg_execute_server_program TO ${me}`, 'grant the right to run server programs'],
    [`GRANT pg_read_server_files TO ${me}`, 'grant the right to read server files'],
    [`GRANT pg_write_server_files TO ${me}`, 'grant the right to write server files'],
    [`COPY (SELECT 1) TO PROGRAM 'id'`, 'run a shell command'],
    [`COPY (SELECT 1) TO '/tmp/iso-${RUN}'`, 'write a server file'],
    [`SELECT pg_read_file('/etc/passwd')`, 'read a server file'],
    [`CREATE ROLE iso_escape_${RUN} SUPERUSER`, 'create a superuser'],
    [`CREATE ROLE iso_escape_${RUN}`, 'create any role'],
    [`ALTER ROLE ${me} CREATEROLE`, 'give itself CREATEROLE'],
    [`ALTER ROLE ${me} SUPERUSER`, 'become superuser'],
    [`ALTER ROLE ${me} REPLICATION`, 'give itself REPLICATION'],
    [`SET ROLE cloud_admin`, 'act as cloud_admin'],
    [`ALTER SYSTEM SET archive_command = 'id'`, 'change server settings'],
    [`ALTER DATABASE ${A.database} SET session_preload_libraries = 'auto_explain'`, 'load libraries into sessions'],
  ];
  for (const [sql, what] of attempts) {
    const err = await captureError(() => c.query(sql));
    assert.equal(err.code, '42501', `${what} (${sql}): expected permission denied, got ${err.code} ${err.message}`);
  }
  const { rows } = await c.query(
    `SELECT rolsuper, rolcreaterole, rolreplication, rolcreatedb, rolbypassrls,
            array(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                  WHERE m.member = r.oid ORDER BY 1) AS member_of
     FROM pg_roles r WHERE rolname = current_user`,
  );
  assert.deepEqual(rows, [
    {
      rolsuper: false,
      rolcreaterole: false,
      rolreplication: false,
      rolcreatedb: true,
      rolbypassrls: true,
      member_of: ['pg_monitor', 'pg_read_all_data', 'pg_signal_backend', 'pg_write_all_data'],
    },
  ]);
  // Nobody but cloud_admin holds anything that reaches the host.
  const holders = await c.query(
    `SELECT r.rolname FROM pg_roles r
     WHERE r.rolname <> 'cloud_admin' AND (r.rolsuper OR r.rolcreaterole OR r.rolreplication
       OR pg_has_role(r.oid, 'pg_execute_server_program', 'MEMBER')
       OR pg_has_role(r.oid, 'pg_read_server_files', 'MEMBER')
       OR pg_has_role(r.oid, 'pg_write_server_files', 'MEMBER'))
       AND r.rolname !~ '^pg_'`,
  );
  assert.deepEqual(holders.rows, []);
  // The default endpoint's postgres role is an API role like any other.
  const main = await neon(requireEnv('DATABASE_URL'))`SELECT rolcreaterole, rolsuper FROM pg_roles WHERE rolname = current_user`;
  assert.deepEqual(main, [{ rolcreaterole: false, rolsuper: false }]);
});

// ---------------------------------------------------------------------------------------
// 2. PgBouncer's authentication runs no SQL in tenant databases
// ---------------------------------------------------------------------------------------

test("a database owner's search_path hijack runs nothing as superuser through -pooler", { timeout: 120_000 }, async () => {
  const c = await tcp(A);
  await c.query(`CREATE SCHEMA evil`);
  await c.query(`CREATE TABLE evil.calls (who text, superuser boolean)`);
  await c.query(`GRANT ALL ON SCHEMA evil TO PUBLIC; GRANT ALL ON evil.calls TO PUBLIC`);
  // Shadows pg_catalog.now() for whoever has evil first on its search_path: records who
  // called it and, when that is a superuser, tries to make the owner one.
  await c.query(`CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO evil.calls VALUES (current_user, (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user));
      BEGIN
        EXECUTE 'ALTER ROLE ${A.role} SUPERUSER';
      EXCEPTION WHEN OTHERS THEN NULL;
      END;
      RETURN pg_catalog.now();
    END $$`);
  await c.query(`ALTER DATABASE ${A.database} SET search_path = evil, pg_catalog`);
  try {
    // Fresh logins through PgBouncer, over TCP and HTTP, with the owner and with a second role.
    const second = { role: `iso_second_${RUN}`, password: secret() };
    await api.createRole(A.id, second.role, second.password);
    for (const opts of [{}, second]) {
      assert.equal((await tcpQuery(A, 'SELECT current_user AS u', { ...opts, pooler: true }))[0].u, opts.role ?? A.role);
      assert.equal((await http(A, { ...opts, pooler: true })`SELECT current_user AS u`)[0].u, opts.role ?? A.role);
    }
    const calls = await c.query(`SELECT who, superuser FROM evil.calls WHERE superuser OR who = 'cloud_admin'`);
    assert.deepEqual(calls.rows, [], 'the hijacked function ran as a superuser');
    const { rows } = await c.query(`SELECT rolsuper FROM pg_roles WHERE rolname = $1`, [A.role]);
    assert.deepEqual(rows, [{ rolsuper: false }]);
  } finally {
    await c.query(`ALTER DATABASE ${A.database} RESET search_path`);
    await c.query(`DROP SCHEMA evil CASCADE`);
  }
});

// ---------------------------------------------------------------------------------------
// 3. A shell as the compute's OS user
// ---------------------------------------------------------------------------------------

test("a shell as one endpoint's OS user cannot reach another endpoint, the state store or the wake service", { timeout: 120_000 }, async () => {
  const a = osUser(A);
  const b = osUser(B);
  assert.notEqual(a.uid, b.uid, 'each endpoint runs as its own OS user');
  assert.notEqual(a.uid, 0);
  assert.notEqual(a.uid, fs.statSync(path.join(WAKE_DATA_DIR, 'state')).uid, 'the state store has its own OS user');
  const theirs = postmaster(B);
  const attacks = [
    [`cat ${shellQuote(path.join(computeDir(B), 'pgdata', 'PG_VERSION'))}`, "read B's data"],
    [`ls ${shellQuote(computeDir(B))}`, "list B's directory"],
    [`${shellQuote(path.join(PG_BIN, 'psql'))} -XAtw -h ${shellQuote(theirs.socketDir)} -p ${theirs.port} -U cloud_admin -d postgres -c 'SELECT 1'`, "connect to B's Postgres as cloud_admin"],
    [`kill -0 ${theirs.pid}`, "signal B's postmaster"],
    [`ls ${shellQuote(path.join(WAKE_DATA_DIR, 'state'))}`, 'look into the state store'],
    [`cat /proc/${WAKE_PID}/environ`, "read the wake service's environment (its tokens)"],
  ];
  for (const [command, what] of attacks) {
    const r = await asUser(a.name, command);
    assert.notEqual(r.code, 0, `${what} succeeded as ${a.name}: ${r.stdout}`);
  }
  // cloud_admin over its own socket is refused too (peer authentication maps only the wake
  // service's user), and over TCP always.
  const own = postmaster(A);
  for (const host of [own.socketDir, '127.0.0.1']) {
    const r = await asUser(a.name, `${shellQuote(path.join(PG_BIN, 'psql'))} -XAtw -h ${shellQuote(host)} -p ${own.port} -U cloud_admin -d postgres -c 'SELECT 1'`);
    assert.notEqual(r.code, 0, `cloud_admin login as ${a.name} via ${host}: ${r.stdout}`);
  }
});

test('symlinks and fake pid files planted by the compute user do not reach the host across a suspend and a resume', { timeout: 180_000 }, async () => {
  const user = osUser(B);
  const dir = computeDir(B);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), `iso-${RUN}-`));
  try {
    // A root-owned file outside the compute, and root processes that look like the compute's.
    const sentinel = path.join(tmp, 'sentinel');
    fs.writeFileSync(sentinel, 'root only\n', { mode: 0o600 });
    const before = fs.statSync(sentinel);
    const fakes = [
      spawn('bash', ['-c', `exec -a pgbouncer tail -f ${shellQuote(path.join(dir, 'pgbouncer', 'pgbouncer.ini'))}`], { stdio: 'ignore' }),
      spawn('bash', ['-c', `exec -a postgres python3 -c 'import time; time.sleep(600)' -D ${shellQuote(path.join(dir, 'pgdata'))}`], { stdio: 'ignore' }),
    ];
    spawned.push(...fakes);
    await sleep(300);
    for (const f of fakes) assert.ok(f.exitCode === null, 'the fake root processes run');
    // What a tenant's shell could do: point the log at the root file, the pid files at the
    // root processes.
    const plant = async (commands) => {
      for (const command of commands) {
        const r = await asUser(user.name, command);
        assert.equal(r.code, 0, `${command}: ${r.stderr}`);
      }
    };
    await plant([
      `ln -sfn ${shellQuote(sentinel)} ${shellQuote(path.join(dir, 'postgres.log'))}`,
      `echo ${fakes[0].pid} > ${shellQuote(path.join(dir, 'pgbouncer', 'pgbouncer.pid'))}`,
    ]);
    // The root file and the root processes are checked after every step, before whether the
    // endpoint still works: that the host was not touched is the point.
    const hostUntouched = async (step) => {
      await sleep(100); // a child's exit is seen on the next turns of the event loop
      const now = fs.statSync(sentinel);
      assert.equal(fs.readFileSync(sentinel, 'utf8'), 'root only\n', `${step}: the root file kept its content`);
      assert.deepEqual([now.uid, now.gid, now.mode, now.size], [before.uid, before.gid, before.mode, before.size], `${step}: the root file kept its owner and mode`);
      for (const f of fakes) {
        assert.deepEqual([f.exitCode, f.signalCode], [null, null], `${step}: root process ${f.pid} was not signalled`);
      }
    };
    const suspend = () => api.call('POST', `/v1/endpoints/${B.id}/suspend?force=true`);
    const first = await suspend();
    await hostUntouched('first suspend');
    assert.equal(first.status, 200, first.text);
    // While suspended: a postmaster.pid naming the fake root postmaster, and PgBouncer's log
    // pointed at the root file too (PgBouncer, running as the compute's user, cannot open it
    // and exits at its next log line: the tenant only stops its own pooler, which the next
    // start replaces).
    await plant([
      `printf '%s\\n' ${fakes[1].pid} ${shellQuote(path.join(dir, 'pgdata'))} 0 1 /tmp '' 0 ready > ${shellQuote(path.join(dir, 'pgdata', 'postmaster.pid'))}`,
      `ln -sfn ${shellQuote(sentinel)} ${shellQuote(path.join(dir, 'pgbouncer', 'pgbouncer.log'))}`,
    ]);
    // Resume (by a query), suspend again, resume again: the endpoint keeps working.
    const resumed = await tcpQuery(B, 'SELECT current_user AS u').catch((e) => e);
    await hostUntouched('resume');
    assert.deepEqual(resumed, [{ u: B.role }]);
    const second = await suspend();
    await hostUntouched('second suspend');
    assert.equal(second.status, 200, second.text);
    assert.equal((await http(B)`SELECT current_user AS u`)[0].u, B.role);
    await hostUntouched('second resume');
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------------------
// 4. Unauthenticated clients
// ---------------------------------------------------------------------------------------

/** Every unauthenticated attempt on `ep`: unknown role, wrong password, over HTTP, WebSocket, TCP, direct and -pooler. */
async function unauthenticatedBarrage(ep) {
  const outcomes = [];
  for (const opts of [{ password: 'wrong-password' }, { role: `iso_nobody_${RUN}`, password: 'whatever' }]) {
    for (const pooler of [false, true]) {
      const o = { ...opts, pooler };
      outcomes.push(await captureError(() => http(ep, o)`SELECT 1`));
      outcomes.push(await captureError(() => tcpQuery(ep, 'SELECT 1', o)));
      outcomes.push(await captureError(() => wsQuery(ep, 'SELECT 1', o)));
    }
  }
  for (const err of outcomes) assert.match(String(err?.message), /password authentication failed/, String(err?.stack));
}

test('unauthenticated clients wake nothing and open no backend connection (suspended, then warm)', { timeout: 180_000 }, async () => {
  await api.expect(200, 'POST', `/v1/endpoints/${A.id}/suspend?force=true`);
  const events = async () => (await api.expect(200, 'GET', `/v1/endpoints/${A.id}/events?limit=10000`)).length;
  const eventsBefore = await events();
  const connectsBefore = await backendConnects();
  await unauthenticatedBarrage(A);
  // An unknown endpoint too.
  const ghost = { ...A, id: `iso-ghost-${RUN}` };
  await unauthenticatedBarrage(ghost);
  const ep = await api.expect(200, 'GET', `/v1/endpoints/${A.id}`);
  assert.equal(ep.state, 'suspended', 'still suspended');
  assert.equal(await events(), eventsBefore, 'no resume was even attempted');
  assert.equal(await backendConnects(), connectsBefore, 'no backend connection was opened');
  assert.equal((await api.endpoint(ghost.id)).status, 404);

  // Warm: a victim's pooled connection survives the barrage and is reused afterwards.
  const victim = http(A);
  assert.equal((await victim`SELECT current_user AS u`)[0].u, A.role);
  assert.equal((await victim`SELECT current_user AS u`)[0].u, A.role);
  const connectsWarm = await backendConnects();
  const hits = promSum(await gatewayMetrics(), 'gateway_pool_checkouts_total', { outcome: 'hit' });
  await unauthenticatedBarrage(A);
  assert.equal(await backendConnects(), connectsWarm, 'no backend connection for unauthenticated clients');
  assert.equal((await victim`SELECT current_user AS u`)[0].u, A.role);
  assert.equal(await backendConnects(), connectsWarm, "the victim's next query reused its pooled connection");
  assert.ok(promSum(await gatewayMetrics(), 'gateway_pool_checkouts_total', { outcome: 'hit' }) > hits, 'a pool hit');
});

// ---------------------------------------------------------------------------------------
// 5. The role API
// ---------------------------------------------------------------------------------------

test('a password change and a drop through the API take effect everywhere by the time it answers', { timeout: 180_000 }, async () => {
  const role = { role: `iso_rotate_${RUN}`, password: secret() };
  await api.createRole(A.id, role.role, role.password);
  // Warm every path with the first password: cached secrets, proofs and pooled connections.
  for (let i = 0; i < 2; i++) await assertAllWork(A, role, role.role, 'first password');
  const session = await tcp(A, role);
  const next = secret();
  const patched = await api.expect(200, 'PATCH', `/v1/endpoints/${A.id}/roles/${role.role}`, { body: { password: next } });
  assert.equal(patched.name, role.role);
  await assertAllRefused(A, role, 'old password right after PATCH');
  await assertAllWork(A, { ...role, password: next }, role.role, 'new password right after PATCH');
  // An open session is not cut by a password change.
  assert.equal((await session.query('SELECT 1 AS one')).rows[0].one, 1);

  // Its sessions are ended by Postgres (pg_terminate_backend): the FATAL reaches the client.
  const ended = new Promise((resolve) => session.once('error', resolve));
  await api.expect(204, 'DELETE', `/v1/endpoints/${A.id}/roles/${role.role}`);
  await assertAllRefused(A, { ...role, password: next }, 'after DELETE');
  const fatal = await ended;
  assert.equal(fatal.code, '57P01', `the session was told why it ended: ${fatal.message}`);
  assert.equal(fatal.message, 'terminating connection due to administrator command');
  // It is gone from Postgres and from the API.
  await assert.rejects(() => session.query('SELECT 1'));
  const { rows } = await tcpQuery(A, `SELECT count(*)::int AS n FROM pg_roles WHERE rolname = '${role.role}'`).then((r) => ({ rows: r }));
  assert.deepEqual(rows, [{ n: 0 }]);
  assert.ok(!(await api.expect(200, 'GET', `/v1/endpoints/${A.id}`)).roles.includes(role.role));
  // Unknown roles and bad input are clear errors.
  const missing = await api.call('PATCH', `/v1/endpoints/${A.id}/roles/${role.role}`, { body: { password: 'x' } });
  assert.equal(missing.status, 404, missing.text);
  assert.equal((await api.call('DELETE', `/v1/endpoints/${A.id}/roles/${role.role}`)).status, 404);
  assert.equal((await api.call('PATCH', `/v1/endpoints/${A.id}/roles/${A.role}`, { body: { password: '' } })).status, 422);
  assert.equal((await api.call('PATCH', `/v1/endpoints/${A.id}/roles/${A.role}`, { body: { pw: 'x' } })).status, 400);
  // A role that owns a database cannot be dropped.
  const owner = await api.call('DELETE', `/v1/endpoints/${A.id}/roles/${A.role}`);
  assert.equal(owner.status, 409, owner.text);
  assert.match(owner.json.error.message, new RegExp(A.database));
});

test('concurrent creates of one role: one wins and its password is the one that works', { timeout: 120_000 }, async () => {
  const name = `iso_race_${RUN}`;
  const passwords = Array.from({ length: 6 }, () => secret());
  const answers = await Promise.all(
    passwords.map((password) => api.call('POST', `/v1/endpoints/${A.id}/roles`, { body: { name, password } })),
  );
  const statuses = answers.map((r) => r.status).sort();
  assert.deepEqual(statuses, [201, 409, 409, 409, 409, 409], answers.map((r) => r.text).join('\n'));
  const winner = passwords[answers.findIndex((r) => r.status === 201)];
  await assertAllWork(A, { role: name, password: winner }, name, "the winner's password");
  for (const loser of passwords.filter((p) => p !== winner)) {
    const err = await captureError(() => http(A, { role: name, password: loser })`SELECT 1`);
    assert.ok(err instanceof NeonDbError, String(err));
    assert.equal(err.message, `password authentication failed for user '${name}'`);
  }
  await api.expect(204, 'DELETE', `/v1/endpoints/${A.id}/roles/${name}`);
});

test('a role made in SQL outside the API is not taken over by a create', { timeout: 120_000 }, async () => {
  // An operator (root, cloud_admin over the private socket) makes a role in SQL.
  const name = `iso_sql_${RUN}`;
  const own = postmaster(A);
  const r = await run(path.join(PG_BIN, 'psql'), ['-XAtw', '-h', own.socketDir, '-p', String(own.port), '-U', 'cloud_admin', '-d', 'postgres', '-c', `CREATE ROLE ${name} LOGIN PASSWORD 'known-to-someone'`]);
  assert.equal(r.code, 0, r.stderr);
  const created = await api.call('POST', `/v1/endpoints/${A.id}/roles`, { body: { name, password: secret() } });
  assert.equal(created.status, 409, created.text);
  assert.match(created.json.error.message, /not created through this API/);
  // It is not an API role: nobody logs in with it through the gateway, whatever the password.
  await assertAllRefused(A, { role: name, password: 'known-to-someone' }, 'a role made in SQL');
  assert.ok(!(await api.expect(200, 'GET', `/v1/endpoints/${A.id}`)).roles.includes(name));
});

test('a password changed in SQL is not used by the gateway, and the API password is back after a suspend', { timeout: 120_000 }, async () => {
  const role = { role: `iso_drift_${RUN}`, password: secret() };
  await api.createRole(A.id, role.role, role.password);
  // A role may change its own password in SQL; the gateway and PgBouncer keep checking the
  // API's verifier, so the SQL password never works through them.
  await tcpQuery(A, `ALTER ROLE ${role.role} PASSWORD 'set-in-sql'`, role);
  await assertAllRefused(A, { ...role, password: 'set-in-sql' }, 'the password set in SQL');
  // A gentle suspend (once the gateway's lease from the session above has run out) puts the
  // API's verifier back in Postgres; the next start serves it.
  await poll(async () => (await api.call('POST', `/v1/endpoints/${A.id}/suspend`)).status === 200, 'a gentle suspend of A', { timeoutMs: 30_000, intervalMs: 500 });
  await assertAllWork(A, role, role.role, 'the API password after the suspend');
  await api.expect(204, 'DELETE', `/v1/endpoints/${A.id}/roles/${role.role}`);
});
