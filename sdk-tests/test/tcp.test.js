// Plain Postgres clients on the gateway's public port: node-postgres, psql and pgbench, over
// plain TCP and over TLS (SSLRequest, then the test CA's certificate). Results and errors
// must equal a direct connection; cancel keys, authentication failures and endpoint
// selection (SNI, options=endpoint, password hack) behave as on the WebSocket tunnel.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import {
  pg,
  requireEnv,
  DIRECT_DATABASE_URL,
  GATEWAY_HOST,
  GATEWAY_PORT,
  pgClient,
  uniqueName,
  ident,
  errorSummary,
  captureError,
  waitFor,
  startSleep,
  metric,
  assertSameQuery,
  assertSameQueryError,
  TYPES_QUERY,
} from './helpers.js';

const TLS_CA_PATH = requireEnv('GATEWAY_TLS_CA');
const TLS_CA = readFileSync(TLS_CA_PATH, 'utf8');
const PSQL = requireEnv('PSQL');
const PGBENCH = requireEnv('PGBENCH');

const AUTH_FAILED = "password authentication failed for user 'postgres'";
const BASE = { host: GATEWAY_HOST, port: GATEWAY_PORT, user: 'postgres', password: 'postgres', database: 'main' };

const T_UNIQ = uniqueName('tcp_uniq');
const BENCH_DB = uniqueName('bench');

let direct;

before(async () => {
  direct = await pgClient();
  await direct.query(`CREATE TABLE ${T_UNIQ} (id int PRIMARY KEY, email text UNIQUE)`);
  await direct.query(`INSERT INTO ${T_UNIQ} VALUES (1, 'taken@example.com')`);
});

after(async () => {
  if (direct) {
    for (const stmt of [`DROP TABLE IF EXISTS ${T_UNIQ}`, `DROP DATABASE IF EXISTS ${ident(BENCH_DB)} WITH (FORCE)`]) {
      await direct.query(stmt).catch((e) => console.error(`cleanup failed: ${stmt}: ${e.message}`));
    }
    await direct.end();
  }
});

/** A connected node-postgres client on the gateway's port (plain TCP unless `ssl` is given). */
async function gatewayClient(extra = {}) {
  const c = new pg.Client({ ...BASE, ...extra });
  await c.connect();
  return c;
}

/** Connect with `extra` and run a query; it must fail. The error. */
async function failedConnect(extra) {
  const c = new pg.Client({ ...BASE, ...extra });
  c.on('error', () => {}); // the server closes after a FATAL
  const err = await captureError(async () => {
    await c.connect();
    await c.query('SELECT 1');
  });
  await c.end().catch(() => {});
  return err;
}

const isTls = (c) => c.connection.stream.encrypted === true;

// ---------------------------------------------------------------------------
// node-postgres
// ---------------------------------------------------------------------------

const TRANSPORTS = [
  { name: 'plain TCP', extra: {}, tls: false, label: 'tcp' },
  // no SNI for an IP address: the gateway asks for a cleartext password (inside TLS)
  { name: 'TLS, no SNI', extra: { ssl: { ca: TLS_CA } }, tls: true, label: 'tls' },
  // SNI names the endpoint: Postgres' own SCRAM exchange is relayed
  { name: 'TLS with SNI db.localtest.me', extra: { ssl: { ca: TLS_CA, servername: 'db.localtest.me' } }, tls: true, label: 'tls' },
];

for (const t of TRANSPORTS) {
  test(`node-postgres over ${t.name}: results and errors equal a direct connection`, async () => {
    const c = await gatewayClient(t.extra);
    try {
      assert.equal(isTls(c), t.tls, 'client-side transport');
      await assertSameQuery(c, direct, TYPES_QUERY, undefined, 'types, simple protocol');
      await assertSameQuery(c, direct, TYPES_QUERY + ' WHERE $1::int = 1', [1], 'types, extended protocol');
      await assertSameQuery(c, direct, `SELECT * FROM ${T_UNIQ} ORDER BY id`, undefined, 'a table: tableID/columnID');
      await assertSameQuery(c, direct, 'SELECT 1 AS a; SELECT 2 AS b', undefined, 'two statements');
      assert.ok((await metric('gateway_sessions_active', { transport: t.label })) >= 1, `a ${t.label} session is active`);

      const uniq = await assertSameQueryError(c, direct, `INSERT INTO ${T_UNIQ} VALUES (2, 'taken@example.com')`);
      assert.equal(uniq.code, '23505');
      assert.ok(uniq.detail && uniq.constraint && uniq.table === T_UNIQ && uniq.schema === 'public');
      const syntax = await assertSameQueryError(c, direct, 'SELEC 1');
      assert.ok(syntax.position);
      await assertSameQueryError(c, direct, 'SELECT 1/0');
      await assertSameQueryError(c, direct, `SELECT nosuchcol FROM ${T_UNIQ}`);

      // a transaction, seen from outside
      await c.query('BEGIN');
      await c.query(`INSERT INTO ${T_UNIQ} VALUES (100, $1)`, [t.name]);
      assert.equal((await direct.query(`SELECT count(*)::int AS n FROM ${T_UNIQ} WHERE id = 100`)).rows[0].n, 0);
      await c.query('ROLLBACK');
      assert.equal((await c.query(`SELECT count(*)::int AS n FROM ${T_UNIQ} WHERE id = 100`)).rows[0].n, 0);

      // the cancel key is the gateway's, not the backend's
      const pid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      assert.notEqual(c.processID, pid);
    } finally {
      await c.end();
    }
  });
}

test('node-postgres with sslmode=verify-full&sslrootcert= in the connection string', async () => {
  const url = `postgres://postgres:postgres@${GATEWAY_HOST}:${GATEWAY_PORT}/main?sslmode=verify-full&sslrootcert=${encodeURIComponent(TLS_CA_PATH)}`;
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    assert.equal(isTls(c), true);
    assert.equal(c.connection.stream.authorized, true, 'the certificate verified against the test CA');
    assert.deepStrictEqual((await c.query('SELECT current_database() AS db')).rows, [{ db: 'main' }]);
  } finally {
    await c.end();
  }
});

test('TLS certificate checks are real: a name the certificate lacks is refused', async () => {
  const err = await failedConnect({ ssl: { ca: TLS_CA, servername: 'gateway.example.com' } });
  assert.equal(err.code, 'ERR_TLS_CERT_ALTNAME_INVALID', `${err.code}: ${err.message}`);
});

test('node-postgres: wrong password, unknown endpoint and unknown role fail alike on TCP and TLS', async () => {
  const cases = [
    ['tcp, wrong password', { password: 'wrong' }],
    ['tcp, unknown endpoint in options', { options: 'endpoint=sdktnosuch' }],
    ['tls, wrong password', { password: 'wrong', ssl: { ca: TLS_CA } }],
    ['tls, unknown endpoint by SNI', { ssl: { ca: TLS_CA, servername: 'sdktnosuch.localtest.me' } }],
    ['tls+SNI, wrong password', { password: 'wrong', ssl: { ca: TLS_CA, servername: 'db.localtest.me' } }],
    ['tls, password hack to an unknown endpoint', { password: 'endpoint=sdktnosuch;postgres', ssl: { ca: TLS_CA } }],
  ];
  let first;
  for (const [label, extra] of cases) {
    const err = await failedConnect(extra);
    assert.equal(err.code, '28P01', `${label}: ${err.message}`);
    assert.equal(err.message, AUTH_FAILED, label);
    assert.equal(err.severity, 'FATAL', label);
    first ??= errorSummary(err);
    assert.deepStrictEqual(errorSummary(err), first, label);
  }
  const noRole = await failedConnect({ user: 'sdkt_no_such_role' });
  assert.equal(noRole.code, '28P01');
  assert.equal(noRole.message, "password authentication failed for user 'sdkt_no_such_role'");
});

test('node-postgres: options=endpoint and the password hack name the endpoint', async () => {
  const search = '-c search_path=sdkt_custom,public';
  const viaOptions = await gatewayClient({ options: `endpoint=db ${search}` });
  const plain = new pg.Client({ connectionString: DIRECT_DATABASE_URL, options: search });
  await plain.connect();
  try {
    const got = (await viaOptions.query('SHOW search_path')).rows[0].search_path;
    assert.equal(got, (await plain.query('SHOW search_path')).rows[0].search_path, 'the rest of options reaches Postgres');
  } finally {
    await viaOptions.end();
    await plain.end();
  }
  const hack = await gatewayClient({ password: 'endpoint=db;postgres', ssl: { ca: TLS_CA } });
  assert.deepStrictEqual((await hack.query('SELECT 1 AS hacked')).rows, [{ hacked: 1 }]);
  await hack.end();
  // SNI and options must agree
  const clash = await failedConnect({ options: 'endpoint=sdktother', ssl: { ca: TLS_CA, servername: 'db.localtest.me' } });
  assert.equal(clash.code, '28000');
});

for (const t of TRANSPORTS.slice(0, 2)) {
  test(`node-postgres over ${t.name}: Client.cancel stops a running statement`, async () => {
    const c = await gatewayClient(t.extra);
    const before = await metric('gateway_cancel_requests_total', { outcome: 'forwarded' });
    try {
      const { outcome: running, active } = await startSleep(c, direct, `tcp-cancel-${t.label}`);
      new pg.Client(BASE).cancel(c, active);
      const err = await running;
      assert.equal(err.code, '57014');
      assert.equal(err.message, 'canceling statement due to user request');
      assert.ok((await metric('gateway_cancel_requests_total', { outcome: 'forwarded' })) >= before + 1);
      assert.deepStrictEqual((await c.query('SELECT 1 AS after_cancel')).rows, [{ after_cancel: 1 }]);
    } finally {
      await c.end();
    }
  });
}

test('a CancelRequest with an unknown key is dropped and counted', async () => {
  const before = await metric('gateway_cancel_requests_total', { outcome: 'no_match' });
  const packet = Buffer.alloc(16);
  packet.writeInt32BE(16, 0);
  packet.writeInt32BE(80877102, 4); // CancelRequest code
  packet.writeInt32BE(0x12345678, 8);
  packet.writeInt32BE(0x0badcafe, 12);
  const received = await new Promise((resolve, reject) => {
    const socket = net.connect({ host: GATEWAY_HOST, port: GATEWAY_PORT }, () => socket.write(packet));
    const chunks = [];
    socket.on('data', (d) => chunks.push(d));
    socket.on('error', reject);
    socket.on('close', () => resolve(Buffer.concat(chunks)));
  });
  assert.equal(received.length, 0, 'the gateway answers a CancelRequest with nothing but closing');
  await waitFor(
    async () => (await metric('gateway_cancel_requests_total', { outcome: 'no_match' })) >= before + 1,
    'the unmatched cancel request counted',
  );
});

// ---------------------------------------------------------------------------
// psql
// ---------------------------------------------------------------------------

/** The environment for libpq tools: no PG* variables from outside, our password. */
function libpqEnv(password = 'postgres') {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PG')) env[k] = v;
  return { ...env, PGPASSWORD: password, PGCONNECT_TIMEOUT: '10' };
}

/** Run a program; resolves with { code, stdout, stderr } whatever the exit status. */
function run(file, args, { env = libpqEnv(), input } = {}) {
  return new Promise((resolve, reject) => {
    const child = execFile(file, args, { env, maxBuffer: 16 * 1024 * 1024, timeout: 120_000 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return reject(err);
      resolve({ code: err ? err.code : 0, stdout, stderr });
    });
    if (input !== undefined) child.stdin.end(input);
  });
}

function conninfo(extra = '') {
  return `host=${GATEWAY_HOST} port=${GATEWAY_PORT} user=postgres dbname=main ${extra}`.trim();
}

async function psql(info, sql, opts) {
  return run(PSQL, ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', info, '-c', sql], opts);
}

function assertOk(r, what) {
  assert.equal(r.code, 0, `${what} exited with ${r.code}: ${r.stderr}`);
}

test('psql with sslmode=disable', async () => {
  const r = await psql(conninfo('sslmode=disable'), `SELECT current_user || '@' || current_database(), 6 * 7`);
  assertOk(r, 'psql');
  assert.equal(r.stdout.trim(), 'postgres@main|42');
  const info = await psql(conninfo('sslmode=disable'), '\\conninfo');
  assertOk(info, 'psql \\conninfo');
  assert.doesNotMatch(info.stdout, /SSL connection/);
});

test('psql with sslmode=verify-full against the test CA, by IP and by name (SNI)', async () => {
  for (const target of [conninfo(), `host=db.localtest.me hostaddr=127.0.0.1 port=${GATEWAY_PORT} user=postgres dbname=main`]) {
    const info = `${target} sslmode=verify-full sslrootcert=${TLS_CA_PATH}`;
    const r = await psql(info, '\\conninfo');
    assertOk(r, `psql ${info}`);
    assert.match(r.stdout, /SSL connection \(protocol: TLSv1\.[23]/, r.stdout);
    const q = await psql(info, `SELECT 'over tls', count(*) FROM generate_series(1, 1000)`);
    assertOk(q, 'psql query over TLS');
    assert.equal(q.stdout.trim(), 'over tls|1000');
  }
  // verify-full refuses a name the certificate does not carry
  const bad = await psql(
    `host=gateway.example.com hostaddr=127.0.0.1 port=${GATEWAY_PORT} user=postgres dbname=main sslmode=verify-full sslrootcert=${TLS_CA_PATH}`,
    'SELECT 1',
  );
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /does not match host name/);
});

test('psql with options=endpoint=db, COPY both ways', async () => {
  const info = `${conninfo('sslmode=disable')} options='endpoint=db -c work_mem=12345kB'`;
  const r = await psql(info, `SHOW work_mem`);
  assertOk(r, 'psql with options');
  assert.equal(r.stdout.trim(), '12345kB', 'the rest of options reaches Postgres');
  const out = await psql(info, 'COPY (SELECT g, md5(g::text) FROM generate_series(1, 5000) g) TO STDOUT');
  assertOk(out, 'COPY TO STDOUT');
  const lines = out.stdout.trim().split('\n');
  assert.equal(lines.length, 5000);
  assert.equal(lines[4999].split('\t')[0], '5000');
  const input = Array.from({ length: 3000 }, (_, i) => `${1000 + i}\tcopied-${i}@example.com`).join('\n') + '\n';
  const copyIn = await run(PSQL, ['-X', '-v', 'ON_ERROR_STOP=1', '-d', info, '-c', `\\copy ${T_UNIQ} FROM STDIN`], { input });
  assertOk(copyIn, 'COPY FROM STDIN');
  const n = await direct.query(`SELECT count(*)::int AS n FROM ${T_UNIQ} WHERE id >= 1000`);
  assert.equal(n.rows[0].n, 3000);
});

test('psql with a wrong password gets the 28P01 FATAL, on TCP and TLS', async () => {
  for (const extra of ['sslmode=disable', `sslmode=verify-full sslrootcert=${TLS_CA_PATH}`]) {
    const r = await psql(conninfo(extra), 'SELECT 1', { env: libpqEnv('not-the-password') });
    assert.equal(r.code, 2, `psql exit code (${extra}): ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`FATAL:  ${AUTH_FAILED}`), extra);
  }
});

// ---------------------------------------------------------------------------
// pgbench
// ---------------------------------------------------------------------------

function assertBenchOk(r, what) {
  assertOk(r, what);
  const failed = /number of failed transactions: (\d+)/.exec(r.stdout);
  assert.ok(failed, `${what}: no failed-transactions line in:\n${r.stdout}`);
  assert.equal(Number(failed[1]), 0, `${what}: failed transactions`);
  const processed = /number of transactions actually processed: (\d+)/.exec(r.stdout);
  assert.ok(processed && Number(processed[1]) > 0, `${what}: transactions processed:\n${r.stdout}`);
  const tps = /tps = ([\d.]+)/.exec(r.stdout);
  assert.ok(tps && Number(tps[1]) > 0, `${what}: tps:\n${r.stdout}`);
  assert.doesNotMatch(r.stderr, /error|FATAL/i, `${what}: stderr`);
}

test('pgbench -i, then pgbench -S for 10 s through the gateway, without errors', async () => {
  await direct.query(`CREATE DATABASE ${ident(BENCH_DB)}`);
  const target = ['-h', GATEWAY_HOST, '-p', String(GATEWAY_PORT), '-U', 'postgres'];
  const init = await run(PGBENCH, ['-i', '-s', '1', '-q', ...target, BENCH_DB]);
  assertOk(init, 'pgbench -i');
  assert.match(init.stderr, /done in/, init.stderr);
  const rows = await run(PSQL, ['-X', '-A', '-t', '-d', conninfo().replace('dbname=main', `dbname=${BENCH_DB}`), '-c', 'SELECT count(*) FROM pgbench_accounts']);
  assertOk(rows, 'count pgbench_accounts');
  assert.equal(rows.stdout.trim(), '100000');

  const bench = await run(PGBENCH, ['-S', '-T', '10', '-c', '4', '-j', '2', '-n', ...target, BENCH_DB]);
  assertBenchOk(bench, 'pgbench -S -T 10');

  // a bounded run over TLS too, with the extended protocol
  const tls = await run(PGBENCH, ['-S', '-t', '200', '-c', '2', '-j', '2', '-n', '-M', 'extended', BENCH_DB], {
    env: {
      ...libpqEnv(),
      PGHOST: GATEWAY_HOST,
      PGPORT: String(GATEWAY_PORT),
      PGUSER: 'postgres',
      PGSSLMODE: 'verify-full',
      PGSSLROOTCERT: TLS_CA_PATH,
    },
  });
  assertBenchOk(tls, 'pgbench -S over TLS');
  assert.match(tls.stdout, /number of transactions actually processed: 400\/400/);
});
