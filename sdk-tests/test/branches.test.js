// Branches (POST /v1/endpoints/{id}/branches) seen through the gateway with the real driver:
//   - a branch made right after HTTP queries on its source (the gateway then holds pooled
//     connections to it) and while a WebSocket session on the source sits idle: the copy goes
//     through, the idle session is ended with 57P01, a new one works;
//   - the branch is reached over HTTP (neon()), WebSocket (Pool) and the -pooler host, with the
//     source's rows, and writes on either side stay on that side;
//   - a reset brings the source's current rows and ends the branch's open session (57P01);
//   - twenty branches made at once, each usable; a delete by label removes them all.
// The store, bad input, expiry and restarts are tested in wake-service/tests/branches.rs.

import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Pool } from '@neondatabase/serverless';
import { neon, neonConfig, requireEnv, GATEWAY_HOST, GATEWAY_PORT, captureError } from './helpers.js';
import { WakeApi } from './stack.js';

const api = new WakeApi(requireEnv('WAKE_URL').replace(/\/+$/, ''), requireEnv('WAKE_ADMIN_TOKEN'));

neonConfig.useSecureWebSocket = false;
neonConfig.wsProxy = (host, port) => `${GATEWAY_HOST}:${GATEWAY_PORT}/v2?address=${host}:${port}`;

const RUN = `${process.pid.toString(36)}${randomBytes(3).toString('hex')}`;
const EP = { id: `brt-${RUN}`, role: `sdkt_br_${RUN}`, password: randomBytes(12).toString('base64url'), db: `sdkt_brdb_${RUN}` };
const pools = [];

/** A connection string for `database` through the gateway (the -pooler host when asked). */
function url(database, { pooler = false } = {}) {
  return `postgres://${EP.role}:${encodeURIComponent(EP.password)}@${EP.id}${pooler ? '-pooler' : ''}.localtest.me:${GATEWAY_PORT}/${database}`;
}

function pool(database, opts) {
  const p = new Pool({ connectionString: url(database, opts), max: 2 });
  p.on('error', () => {}); // a session the test expects to be ended
  pools.push(p);
  return p;
}

/** A checked-out client of `p` whose errors (an idle session's FATAL among them) are kept. */
async function watched(p) {
  const client = await p.connect();
  client.errors = [];
  client.on('error', (e) => client.errors.push(e));
  await client.query('SELECT 1');
  return client;
}

/** The code the server ended `client`'s session with (its idle error, or its next query's). */
async function endedWith(client) {
  const err = await captureError(() => client.query('SELECT 1'));
  client.release(err);
  const coded = [...client.errors, err].find((e) => e.code);
  return coded ? coded.code : `no code (${err.message})`;
}

const branch = (body) => api.expect(201, 'POST', `/v1/endpoints/${EP.id}/branches`, { body });
const titles = async (database, opts) => (await neon(url(database, opts))`SELECT title FROM items ORDER BY id`).map((r) => r.title);

before(async () => {
  await api.create(EP.id, { suspend_timeout_seconds: -1 });
  await api.createRole(EP.id, EP.role, EP.password);
  await api.createDatabase(EP.id, EP.db, EP.role);
  const sql = neon(url(EP.db));
  await sql`CREATE TABLE items (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text NOT NULL)`;
  await sql`INSERT INTO items (title) VALUES ('a'), ('b')`;
});

after(async () => {
  for (const p of pools) await p.end().catch(() => {});
  await api.remove(EP.id);
});

test('a branch of a source the gateway holds pooled connections to: copied, idle sessions ended with 57P01', { timeout: 60_000 }, async () => {
  // Pooled HTTP connections to the source, and an idle WebSocket session on it.
  const sql = neon(url(EP.db));
  await Promise.all(Array.from({ length: 8 }, () => sql`SELECT pg_sleep(0.05)`));
  const session = await watched(pool(EP.db));

  const b = await branch({ from: EP.db, name: `copy_${RUN}`, labels: { run: RUN } });
  assert.equal(b.source, EP.db);
  assert.match(b.connection_uris.direct, new RegExp(`^postgresql://${EP.role}@${EP.id}\\.`));
  assert.match(b.connection_uris.pooled, new RegExp(`@${EP.id}-pooler\\.`));

  assert.equal(await endedWith(session), '57P01', 'the idle session on the source ends');
  assert.deepEqual(await titles(EP.db), ['a', 'b'], 'the source still answers over HTTP');
  assert.deepEqual((await pool(EP.db).query('SELECT count(*)::int AS n FROM items')).rows, [{ n: 2 }], 'and over a new WebSocket session');

  // The branch over HTTP, WebSocket and the pooler, independent of its source.
  assert.deepEqual(await titles(b.name), ['a', 'b']);
  await pool(b.name).query("INSERT INTO items (title) VALUES ('branch')");
  assert.deepEqual(await titles(b.name, { pooler: true }), ['a', 'b', 'branch']);
  assert.deepEqual(await titles(EP.db), ['a', 'b']);
});

test('reset: the source\'s current rows, and the branch\'s open session ended with 57P01', { timeout: 60_000 }, async () => {
  const name = `copy_${RUN}`;
  await neon(url(EP.db))`INSERT INTO items (title) VALUES ('c')`;
  const onBranch = await watched(pool(name));
  const r = await api.expect(200, 'POST', `/v1/endpoints/${EP.id}/branches/${name}/reset`);
  assert.equal(r.name, name);
  assert.equal(await endedWith(onBranch), '57P01', "the branch's session ends");
  assert.deepEqual(await titles(name), ['a', 'b', 'c']);
});

test('twenty branches at once, each usable; deleted together by label', { timeout: 120_000 }, async () => {
  const label = `many-${RUN}`;
  const made = await Promise.all(Array.from({ length: 20 }, () => branch({ from: EP.db, labels: { batch: label } })));
  const names = made.map((b) => b.name);
  assert.equal(new Set(names).size, 20);
  const counts = await Promise.all(names.map(async (n) => (await neon(url(n))`SELECT count(*)::int AS n FROM items`)[0].n));
  assert.deepEqual(counts, Array(20).fill(3));
  const listed = await api.expect(200, 'GET', `/v1/endpoints/${EP.id}/branches?label=batch=${label}`);
  assert.deepEqual(listed.branches.map((b) => b.name).sort(), [...names].sort());
  const gone = await api.expect(200, 'DELETE', `/v1/endpoints/${EP.id}/branches?label=batch=${label}`);
  assert.deepEqual(gone.deleted.sort(), [...names].sort());
  const err = await captureError(() => neon(url(names[0]))`SELECT 1`);
  assert.equal(err.code, '3D000', `a deleted branch's database is gone: ${err.message}`);
});
