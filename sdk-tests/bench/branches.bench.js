// Branches: how long until a test has a database of its own. Through the wake service and
// the gateway with the real driver: POST /v1/endpoints/{id}/branches, then the first query on
// the branch over HTTP (`neon()`), timed together, for a small database (one table, 1,000
// rows) and a large one (1,000 tables, about 100 MB; 100 tables and about 10 MB with
// BENCH_QUICK). Measured in the same run, on the same machine:
//   - the floor: `CREATE DATABASE … TEMPLATE` run by hand on a bare Postgres 15 set up as the
//     computes are (fsync on; base/ a top directory, `chattr +T`) holding the same data, then a
//     connection to the copy and the same query;
//   - the same by hand on a stock cluster (base/ as initdb leaves it): on ext4 without a
//     journal, the inodes each dropped copy frees slow the later copies' file creation, which
//     the computes' `chattr +T` avoids (compute::local::postgres::spread_databases);
//   - a fresh Postgres, what a container-based test gets without the container: initdb,
//     start, first query (scripts/postgres.sh temp).
// Bounded: BENCH_BRANCH_ROUNDS rounds (and a fifth as many for the large database), every
// step with a time limit. With BENCH_BRANCHES_JSON set, the samples are also written there
// (merged into BENCHMARKS.md by `loadgen report`).
//
// Run with: make bench   (scripts/bench.sh starts a wake service and a release gateway)

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { neon, neonConfig, Client } from '@neondatabase/serverless';
import pg from 'pg';
import ws from 'ws';

for (const name of ['GATEWAY_HTTP', 'WAKE_URL', 'WAKE_ADMIN_TOKEN']) {
  if (!process.env[name]) throw new Error(`${name} is not set; run this through scripts/bench.sh`);
}
const GATEWAY = new URL(process.env.GATEWAY_HTTP);
const WAKE_URL = process.env.WAKE_URL.replace(/\/+$/, '');
const QUICK = !['', '0', 'false', 'no', undefined].includes(process.env.BENCH_QUICK);
const ROUNDS = Number(process.env.BENCH_BRANCH_ROUNDS ?? (QUICK ? 10 : 30));
const BIG_ROUNDS = Math.max(2, Math.round(ROUNDS / 5));
const FRESH_ROUNDS = QUICK ? 2 : 3;
const BIG_TABLES = QUICK ? 100 : 1000;
const ROWS_PER_TABLE = 95; // rows of about 1 kB: about 100 kB a table
const STEP_MS = 300_000;
// The endpoint's fixed size: 1 CU is a 1-vCPU quota, what the floor's single copying backend
// can use too (the copy runs inside the endpoint's CPU quota).
const CU = Number(process.env.BENCH_BRANCH_CU ?? 1);
const POSTGRES_SH = fileURLToPath(new URL('../../scripts/postgres.sh', import.meta.url));

neonConfig.fetchEndpoint = () => `${process.env.GATEWAY_HTTP}/sql`;
neonConfig.webSocketConstructor = ws;
neonConfig.useSecureWebSocket = false;
neonConfig.wsProxy = (host, port) => `${GATEWAY.hostname}:${GATEWAY.port}/v2?address=${host}:${port}`;

const RUN = randomBytes(3).toString('hex');
const EP = { id: `bench-br-${RUN}`, role: 'bench', password: randomBytes(12).toString('hex') };
const SMALL_SQL = `CREATE TABLE items (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text NOT NULL);
  INSERT INTO items (title) SELECT 'item ' || g FROM generate_series(1, 1000) g;`;
const BIG_SQL = `CREATE TABLE items (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text NOT NULL);
  INSERT INTO items (title) SELECT 'item ' || g FROM generate_series(1, 1000) g;
  DO $$ BEGIN FOR i IN 1..${BIG_TABLES} LOOP
    EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, pad text NOT NULL)', i);
    EXECUTE format('INSERT INTO t%s SELECT g, repeat(md5((g * %s)::text), 32) FROM generate_series(1, ${ROWS_PER_TABLE}) g', i, i);
  END LOOP; END $$;`;

/** `promise`, or an error after STEP_MS. */
function bounded(what, promise) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${STEP_MS} ms`)), STEP_MS);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

async function call(method, urlPath, body) {
  const res = await fetch(WAKE_URL + urlPath, {
    method,
    signal: AbortSignal.timeout(STEP_MS),
    headers: { authorization: `Bearer ${process.env.WAKE_ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${urlPath}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

const gatewayUrl = (db) => `postgres://${EP.role}:${EP.password}@${EP.id}.localtest.me:${GATEWAY.port}/${db}`;

function run(program, args) {
  return new Promise((resolve, reject) => {
    execFile(program, args, { timeout: STEP_MS }, (err, stdout, stderr) =>
      err ? reject(new Error(`${program} ${args.join(' ')}: ${err.message}\n${stderr}`)) : resolve(stdout.trim()),
    );
  });
}

function sh(args) {
  return new Promise((resolve, reject) => {
    execFile('bash', [POSTGRES_SH, ...args], { timeout: STEP_MS }, (err, stdout, stderr) =>
      err ? reject(new Error(`postgres.sh ${args.join(' ')}: ${err.message}\n${stderr}`)) : resolve(stdout.trim()),
    );
  });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** One round through the product: create a branch of `source`, first query; then delete it. */
async function viaGateway(source) {
  const started = performance.now();
  const branch = await call('POST', `/v1/endpoints/${EP.id}/branches`, { from: source, ttl_seconds: 600 });
  const [{ n }] = await neon(gatewayUrl(branch.name))`SELECT count(*)::int AS n FROM items`;
  const took = performance.now() - started;
  if (n !== 1000) throw new Error(`the branch of ${source} has ${n} items, not 1000`);
  // The gateway's pool holds the connection that query used: the delete ends it.
  const deleting = performance.now();
  await call('DELETE', `/v1/endpoints/${EP.id}/branches/${branch.name}`);
  return { took, deleted: performance.now() - deleting };
}

/** One round of the floor: CREATE DATABASE … TEMPLATE by hand, connect, the same query. */
async function byHand(admin, port, source, i) {
  const name = `hand_${source}_${i}_${port}`;
  const started = performance.now();
  await admin.query(`CREATE DATABASE ${name} TEMPLATE ${source}`);
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password: 'postgres', database: name });
  await client.connect();
  const { rows } = await client.query('SELECT count(*)::int AS n FROM items');
  const took = performance.now() - started;
  await client.end();
  if (rows[0].n !== 1000) throw new Error(`the copy of ${source} has ${rows[0].n} items`);
  const dropping = performance.now();
  await admin.query(`DROP DATABASE ${name}`);
  return { took, dropped: performance.now() - dropping };
}

/** One fresh Postgres: initdb, start, first query; then it goes. */
async function fresh() {
  const port = await freePort();
  const started = performance.now();
  const dir = await sh(['temp', String(port)]);
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password: 'postgres', database: 'main' });
  await client.connect();
  await client.query('SELECT 1');
  const took = performance.now() - started;
  await client.end();
  await sh(['stop', dir]);
  fs.rmSync(dir, { recursive: true, force: true });
  return took;
}

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
const stats = (samples) => {
  const s = [...samples].sort((a, b) => a - b);
  return { p50: percentile(s, 50), p99: percentile(s, 99), n: s.length };
};

// --- setup: the endpoint through the API and the driver, the floor's bare Postgres ----------

await call('POST', '/v1/endpoints', { id: EP.id, suspend_timeout_seconds: -1, min_cu: CU, max_cu: CU });
const bareDirs = [];
try {
  await call('POST', `/v1/endpoints/${EP.id}/roles`, { name: EP.role, password: EP.password });
  for (const db of ['small', 'big']) await call('POST', `/v1/endpoints/${EP.id}/databases`, { name: db, owner: EP.role });
  for (const [db, sql] of [['small', SMALL_SQL], ['big', BIG_SQL]]) {
    const c = new Client({ connectionString: gatewayUrl(db) });
    await c.connect();
    await bounded(`filling ${db}`, c.query(sql));
    await c.end();
  }
  const [{ bytes }] = await neon(gatewayUrl('big'))`SELECT pg_database_size('big')::float8 AS bytes`;
  const bigMb = bytes / 1e6;

  /** A bare Postgres holding the same data (`topdir`: base/ marked as the computes' is). */
  async function bare(topdir) {
    const port = await freePort();
    const dir = await sh(['temp', String(port)]);
    bareDirs.push(dir);
    // Where the filesystem has no such flag, the two bare clusters are alike.
    if (topdir) await run('chattr', ['+T', `${dir}/base`]).catch((e) => console.error(`no top directory: ${e.message}`));
    const admin = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password: 'postgres', database: 'main' });
    await admin.connect();
    for (const [db, sql] of [['small', SMALL_SQL], ['big', BIG_SQL]]) {
      await admin.query(`CREATE DATABASE ${db}`);
      const c = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password: 'postgres', database: db });
      await c.connect();
      await bounded(`filling a bare Postgres's ${db}`, c.query(sql));
      await c.end();
    }
    return { admin, port };
  }
  const floor = await bare(true);
  const stock = await bare(false);

  // --- rounds, alternating product and floor so that drift hits both alike ---------------
  const samples = { small: [], smallFloor: [], smallStock: [], big: [], bigFloor: [], bigStock: [], fresh: [], deleted: [], dropped: [] };
  for (let i = 0; i < ROUNDS; i++) {
    const branch = await bounded('a small branch', viaGateway('small'));
    samples.small.push(branch.took);
    samples.deleted.push(branch.deleted);
    const hand = await bounded('the small floor', byHand(floor.admin, floor.port, 'small', i));
    samples.smallFloor.push(hand.took);
    samples.dropped.push(hand.dropped);
    samples.smallStock.push((await bounded('the small copy on a stock cluster', byHand(stock.admin, stock.port, 'small', i))).took);
  }
  for (let i = 0; i < BIG_ROUNDS; i++) {
    samples.big.push((await bounded('a large branch', viaGateway('big'))).took);
    samples.bigFloor.push((await bounded('the large floor', byHand(floor.admin, floor.port, 'big', i))).took);
    samples.bigStock.push((await bounded('the large copy on a stock cluster', byHand(stock.admin, stock.port, 'big', i))).took);
  }
  await floor.admin.end();
  await stock.admin.end();
  for (let i = 0; i < FRESH_ROUNDS; i++) samples.fresh.push(await bounded('a fresh Postgres', fresh()));

  const bigLabel = `${BIG_TABLES} tables, ${bigMb.toFixed(0)} MB`;
  console.log(`\nbranches (p50 / p99 ms, rounds):`);
  for (const [name, s] of [
    ['small (1 table, 1,000 rows): branch + first neon() query', samples.small],
    ['small: CREATE DATABASE … TEMPLATE by hand + connect + query', samples.smallFloor],
    ['small: the same on a stock cluster (no chattr +T)', samples.smallStock],
    [`large (${bigLabel}): branch + first neon() query`, samples.big],
    [`large: CREATE DATABASE … TEMPLATE by hand + connect + query`, samples.bigFloor],
    ['large: the same on a stock cluster (no chattr +T)', samples.bigStock],
    ['fresh Postgres: initdb + start + first query', samples.fresh],
    ['small: DELETE of a branch the driver used (its pooled session ended)', samples.deleted],
    ['small: DROP DATABASE by hand (no session)', samples.dropped],
  ]) {
    const st = stats(s);
    console.log(`  ${name.padEnd(70)} ${st.p50.toFixed(1).padStart(8)} / ${st.p99.toFixed(1).padStart(8)}  (${st.n})`);
  }
  if (process.env.BENCH_BRANCHES_JSON) {
    const out = {
      cu: CU,
      small: { label: '1 table, 1,000 rows', usable_ms: samples.small, floor_ms: samples.smallFloor, stock_ms: samples.smallStock },
      big: { label: bigLabel, usable_ms: samples.big, floor_ms: samples.bigFloor, stock_ms: samples.bigStock },
      fresh_ms: samples.fresh,
      delete_ms: samples.deleted,
      drop_ms: samples.dropped,
    };
    fs.writeFileSync(process.env.BENCH_BRANCHES_JSON, JSON.stringify(out, null, 2) + '\n');
  }
} finally {
  await call('DELETE', `/v1/endpoints/${EP.id}`).catch((e) => console.error(`cleanup: ${e.message}`));
  for (const dir of bareDirs) {
    await sh(['stop', dir]).catch((e) => console.error(`cleanup: ${e.message}`));
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
