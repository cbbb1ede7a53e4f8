// wrangler-examples/: every example Worker run the way its README says, under `wrangler dev`
// (the real Workers runtime, workerd, from npm), against the stack `make test` starts. Each
// gets a database of its own on an endpoint this file creates (so the endpoint is named by
// the connection string, not by the gateway's default), real HTTP requests, and checks of
// the rows, a transaction's effects, a rollback and row-level security between two users.
//
// The examples' packages come from `npm ci` in each folder (scripts/test.sh does it); a
// folder without node_modules fails here with what to run. wrangler runs with its update
// check, Request.cf download and telemetry off, so nothing is fetched at run time, and with
// its config, logs and state in a temp dir. Every Worker is stopped (its whole process group)
// before its test ends, and no workerd of this file may outlive it.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { GATEWAY_PORT, requireEnv, pg } from './helpers.js';
import { WakeApi, childEnv, freePort, processes, run, sleep, tail } from './stack.js';

const EXAMPLES = fileURLToPath(new URL('../../wrangler-examples/', import.meta.url));
const WAKE_URL = requireEnv('WAKE_URL').replace(/\/+$/, '');
const api = new WakeApi(WAKE_URL, requireEnv('WAKE_ADMIN_TOKEN'));
const RUN = `${process.pid.toString(36)}${randomBytes(3).toString('hex')}`;
const GATEWAY = `127.0.0.1:${GATEWAY_PORT}`;

/** This file's endpoint: an owner role with a password, and one database per example. */
const EP = { id: `wx-${RUN}`, owner: `wx_owner_${RUN}`, password: randomBytes(12).toString('base64url') };
const HOST = `${EP.id}.localtest.me:${GATEWAY_PORT}`;
const DB = Object.fromEntries(
  ['http_query', 'websocket_transaction', 'drizzle', 'jwt_rls', 'hyperdrive', 'shared'].map((n) => [n, `wx_${n}_${RUN}`]),
);
const ownerUrl = (db) => `postgresql://${EP.owner}:${EP.password}@${HOST}/${db}`;
/** The same over the gateway's Postgres port: no DNS, so the endpoint goes in `options`. */
const tcpUrl = (db) => `postgresql://${EP.owner}:${EP.password}@${GATEWAY}/${db}?options=endpoint%3D${EP.id}`;

let TMP; // config, logs, state and key files of this file's wrangler runs
const workers = new Set(); // running, stopped in after() if a test failed before stopping one

before(async () => {
  TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'wrangler-examples-'));
  for (const name of fs.readdirSync(EXAMPLES).filter((n) => fs.statSync(path.join(EXAMPLES, n)).isDirectory())) {
    assert.ok(
      fs.existsSync(path.join(EXAMPLES, name, 'node_modules', '.bin', 'wrangler')),
      `wrangler-examples/${name} has no node_modules: run \`npm ci\` there (scripts/test.sh does)`,
    );
  }
  await api.create(EP.id, { suspend_timeout_seconds: -1 });
  await api.createRole(EP.id, EP.owner, EP.password);
  for (const db of Object.values(DB)) await api.createDatabase(EP.id, db, EP.owner);
});

after(async () => {
  for (const w of workers) await w.stop();
  await api.remove(EP.id);
  if (TMP) fs.rmSync(TMP, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------
// Running an example
// ---------------------------------------------------------------------------

/** Run `schema.sql` of `example` as the owner, over the gateway's Postgres port (TCP). */
async function applySchema(example, db) {
  const client = new pg.Client({ connectionString: tcpUrl(db) });
  await client.connect();
  try {
    await client.query(fs.readFileSync(path.join(EXAMPLES, example, 'schema.sql'), 'utf8'));
  } finally {
    await client.end();
  }
}

/** Rows of `query` on `db`, as the owner over TCP (to check what a Worker did). */
async function ownerQuery(db, query, values = []) {
  const client = new pg.Client({ connectionString: tcpUrl(db) });
  await client.connect();
  try {
    return (await client.query(query, values)).rows;
  } finally {
    await client.end();
  }
}

/** One example under `wrangler dev` on a free port; `vars` go in through --env-file. */
class Worker {
  constructor(example, { vars = {}, env = {}, dir = path.join(EXAMPLES, example) } = {}) {
    this.example = example;
    this.dir = dir;
    this.vars = vars;
    this.env = env;
    this.home = fs.mkdtempSync(path.join(TMP, `${example}-`));
    this.log = path.join(this.home, 'wrangler.log');
  }

  async start() {
    this.port = await freePort();
    const envFile = path.join(this.home, 'vars.env');
    fs.writeFileSync(envFile, Object.entries(this.vars).map(([k, v]) => `${k}=${v}\n`).join(''), { mode: 0o600 });
    const args = ['dev', '--ip', '127.0.0.1', '--port', String(this.port), '--inspector-port', String(await freePort()),
      '--env-file', envFile, '--persist-to', path.join(this.home, 'state'), '--show-interactive-dev-session=false'];
    const fd = fs.openSync(this.log, 'a');
    try {
      this.child = spawn(path.join(this.dir, 'node_modules', '.bin', 'wrangler'), args, {
        cwd: this.dir,
        detached: true, // its own process group: workerd and esbuild stop with it
        stdio: ['ignore', fd, fd],
        env: childEnv({
          ...this.env,
          WRANGLER_HIDE_BANNER: 'true', // the banner checks npm for a newer wrangler
          WRANGLER_SEND_METRICS: 'false',
          CLOUDFLARE_CF_FETCH_ENABLED: 'false', // no Request.cf download from workers.cloudflare.com
          XDG_CONFIG_HOME: path.join(this.home, 'config'),
          WRANGLER_LOG_PATH: path.join(this.home, 'logs'),
          WRANGLER_REGISTRY_PATH: path.join(this.home, 'registry'),
          CI: 'true',
        }),
      });
    } finally {
      fs.closeSync(fd);
    }
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve({ code, signal })));
    workers.add(this);
    await this.ready();
    return this;
  }

  /** Until the Worker answers HTTP (any status), within 90 s; fails early if wrangler exits. */
  async ready() {
    const deadline = Date.now() + 90_000;
    let exit;
    this.exited.then((e) => (exit = e));
    for (;;) {
      if (exit) assert.fail(`wrangler dev (${this.example}) exited ${JSON.stringify(exit)}\n${this.tail()}`);
      try {
        const res = await fetch(`http://127.0.0.1:${this.port}/__ready`, { signal: AbortSignal.timeout(3000) });
        await res.arrayBuffer();
        return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) assert.fail(`wrangler dev (${this.example}) not ready after 90 s\n${this.tail()}`);
      await sleep(200);
    }
  }

  /** A request to the Worker: `{ status, json }`. */
  async call(method, urlPath, { body, headers = {} } = {}) {
    const init = { method, headers: { ...headers }, signal: AbortSignal.timeout(30_000) };
    if (body !== undefined) {
      init.body = typeof body === 'string' ? body : JSON.stringify(body);
      init.headers['content-type'] = 'application/json';
    }
    const res = await fetch(`http://127.0.0.1:${this.port}${urlPath}`, init);
    const text = await res.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      assert.fail(`${this.example}: ${method} ${urlPath} answered ${res.status} with no JSON: ${text.slice(0, 300)}`);
    }
    return { status: res.status, json };
  }

  /** `call`, asserting the status; the JSON. */
  async expect(status, method, urlPath, opts) {
    const r = await this.call(method, urlPath, opts);
    assert.equal(r.status, status, `${this.example}: ${method} ${urlPath}: ${JSON.stringify(r.json)}`);
    return r.json;
  }

  /** SIGTERM to the whole group, SIGKILL after 10 s; then nothing of the group may be left. */
  async stop() {
    if (!workers.delete(this)) return;
    const group = this.child.pid;
    const signal = (sig) => {
      try {
        process.kill(-group, sig);
      } catch {
        // the group is gone
      }
    };
    signal('SIGTERM');
    const timer = setTimeout(() => signal('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(timer);
    for (let i = 0; i < 50 && leftIn(group).length > 0; i++) await sleep(100);
    signal('SIGKILL');
    assert.deepEqual(leftIn(group), [], `wrangler dev (${this.example}) left processes behind`);
  }

  tail() {
    return `==== last lines of wrangler dev (${this.log}) ====\n${tail(this.log, 40)}`;
  }

  /** Lines of wrangler's log that show a download attempt (there must be none). */
  fetchAttempts() {
    return fs.readFileSync(this.log, 'utf8').split('\n').filter((l) => /ENOTFOUND|getaddrinfo|Unable to fetch/.test(l));
  }
}

/** Live processes of process group `pgid` (from /proc/<pid>/stat). */
function leftIn(pgid) {
  return processes()
    .map((p) => p.pid)
    .filter((pid) => {
      try {
        const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        return Number(fields[2]) === pgid && fields[0] !== 'Z';
      } catch {
        return false;
      }
    });
}

/** `work(worker)` with `example` running; the Worker is stopped (and checked) whatever happens. */
async function withWorker(example, opts, work) {
  const worker = await new Worker(example, opts).start();
  try {
    await work(worker);
    assert.deepEqual(worker.fetchAttempts(), [], `${example}: wrangler tried to download something`);
  } catch (err) {
    err.message += `\n${worker.tail()}`;
    throw err;
  } finally {
    await worker.stop();
  }
}

const KEYS_DIR = () => path.join(TMP, 'jwt-keys');

/** jwt-rls's scripts/dev-keys.mjs with `args`, its keys in this file's temp dir. */
async function devKeys(args, env = {}) {
  const script = path.join(EXAMPLES, 'jwt-rls', 'scripts', 'dev-keys.mjs');
  const r = await run(process.execPath, [script, ...args], { env: { ...process.env, DEV_KEYS_DIR: KEYS_DIR(), ...env } });
  assert.equal(r.code, 0, `dev-keys.mjs ${args.join(' ')}: ${r.stderr}`);
  return r.stdout.trim();
}

/** A token for `sub` from the example's stand-in identity provider. */
const token = (sub, ttl) => devKeys(['token', sub], ttl === undefined ? {} : { TTL_SECONDS: String(ttl) });

let jwksRule;
/** The README's `wake-service jwks add --jwks-file dev-keys/jwks.json`, over the API, once. */
async function addJwksRule() {
  if (jwksRule) return jwksRule;
  await devKeys(['keys']);
  const jwks = JSON.parse(fs.readFileSync(path.join(KEYS_DIR(), 'jwks.json'), 'utf8'));
  const body = { provider_name: 'dev-keys', jwks };
  jwksRule = await api.expect(201, 'POST', `/v1/endpoints/${EP.id}/jwks`, { body, timeoutMs: 120_000 });
  return jwksRule;
}

/** The .dev.vars of a driver example: its database on this file's endpoint, via the switch. */
const driverVars = (db) => ({ DATABASE_URL: ownerUrl(db), LOCAL_GATEWAY: GATEWAY });

// ---------------------------------------------------------------------------
// The examples
// ---------------------------------------------------------------------------

test('every schema.sql applies to one database, twice, as the READMEs do with make up\'s main', { timeout: 120_000 }, async () => {
  await addJwksRule(); // jwt-rls's schema needs role `authenticated` and auth.user_id()
  const examples = fs.readdirSync(EXAMPLES).filter((n) => fs.existsSync(path.join(EXAMPLES, n, 'schema.sql')));
  assert.equal(examples.length, 5, `schema.sql files: ${examples}`);
  for (const round of [1, 2]) {
    for (const example of examples) {
      await applySchema(example, DB.shared).catch((err) => assert.fail(`${example}/schema.sql, round ${round}: ${err.message}`));
    }
  }
  const tables = await ownerQuery(DB.shared, "SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = 'public'");
  assert.equal(tables[0].n, 7, 'notes, accounts, transfers, projects, todos, user_notes, visits');
});

test('http-query: neon() over HTTP, JSON in and out, sql.transaction all or nothing', { timeout: 180_000 }, async () => {
  await applySchema('http-query', DB.http_query);
  await withWorker('http-query', { vars: driverVars(DB.http_query) }, async (w) => {
    const made = await w.expect(201, 'POST', '/notes', { body: { title: 'first', body: 'from a Worker' } });
    assert.equal(made.title, 'first');
    const batch = await w.expect(201, 'POST', '/notes/batch', { body: { notes: [{ title: 'b1' }, { title: 'b2', body: 'x' }] } });
    assert.equal(batch.ids.length, 2);

    // The second note breaks the CHECK: the transaction's first insert must not stay.
    const bad = await w.expect(400, 'POST', '/notes/batch', { body: { notes: [{ title: 'kept?' }, { title: '' }] } });
    assert.equal(bad.code, '23514', JSON.stringify(bad));
    const titles = (await ownerQuery(DB.http_query, 'SELECT title FROM notes ORDER BY id')).map((r) => r.title);
    assert.deepEqual(titles, ['first', 'b1', 'b2'], 'rows after a failed sql.transaction');

    const { notes } = await w.expect(200, 'GET', '/notes?limit=2');
    assert.deepEqual(notes.map((n) => n.title), ['b2', 'b1']);
    const gone = await w.expect(200, 'DELETE', `/notes/${made.id}`);
    assert.equal(gone.title, 'first');
    await w.expect(404, 'DELETE', `/notes/${made.id}`);
    assert.equal((await w.expect(400, 'POST', '/notes', { body: '{"title": ' })).error.length > 0, true, 'malformed JSON');
  });
});

test('websocket-transaction: a Pool per request, COMMIT, ROLLBACK, 20 concurrent transfers with no cross-request I/O', { timeout: 180_000 }, async () => {
  await applySchema('websocket-transaction', DB.websocket_transaction);
  await withWorker('websocket-transaction', { vars: driverVars(DB.websocket_transaction) }, async (w) => {
    await w.expect(201, 'POST', '/accounts', { body: { id: 'alice', balance: 100 } });
    await w.expect(201, 'POST', '/accounts', { body: { id: 'bob', balance: 0 } });
    await w.expect(409, 'POST', '/accounts', { body: { id: 'bob', balance: 5 } });

    const t = await w.expect(200, 'POST', '/transfer', { body: { from: 'alice', to: 'bob', amount: 30 } });
    assert.deepEqual(t.balances, { alice: 70, bob: 30 });

    // Rolled back after the debit ran: the credit's account does not exist.
    await w.expect(404, 'POST', '/transfer', { body: { from: 'alice', to: 'nobody', amount: 10 } });
    // Rolled back at the debit: an overdraft breaks the CHECK.
    await w.expect(409, 'POST', '/transfer', { body: { from: 'alice', to: 'bob', amount: 71 } });
    await w.expect(400, 'POST', '/transfer', { body: { from: 'alice', to: 'alice', amount: 1 } });
    assert.deepEqual((await w.expect(200, 'GET', '/accounts')).accounts, [
      { id: 'alice', balance: 70 },
      { id: 'bob', balance: 30 },
    ]);

    // Each request opens and ends its own pool while the others run.
    const answers = await Promise.all(
      Array.from({ length: 20 }, () => w.call('POST', '/transfer', { body: { from: 'alice', to: 'bob', amount: 1 } })),
    );
    assert.deepEqual(answers.map((a) => a.status), Array(20).fill(200), JSON.stringify(answers.filter((a) => a.status !== 200)));
    assert.deepEqual((await w.expect(200, 'GET', '/accounts')).accounts, [
      { id: 'alice', balance: 50 },
      { id: 'bob', balance: 50 },
    ]);
    const rows = await ownerQuery(DB.websocket_transaction, 'SELECT count(*)::int AS n, sum(amount)::int AS total FROM transfers');
    assert.deepEqual(rows, [{ n: 21, total: 50 }], 'only the committed transfers are recorded');
  });
});

test('the pitfall websocket-transaction avoids: a Pool kept across requests breaks the next request on workerd', { timeout: 120_000 }, async () => {
  // The example with its Pool moved to module scope, as a user might "optimise" it; built
  // with the example's own packages.
  const dir = fs.mkdtempSync(path.join(TMP, 'global-pool-'));
  fs.symlinkSync(path.join(EXAMPLES, 'websocket-transaction', 'node_modules'), path.join(dir, 'node_modules'));
  fs.cpSync(path.join(EXAMPLES, 'websocket-transaction', 'wrangler.jsonc'), path.join(dir, 'wrangler.jsonc'));
  fs.mkdirSync(path.join(dir, 'src'));
  fs.cpSync(path.join(EXAMPLES, 'websocket-transaction', 'src', 'local-gateway.ts'), path.join(dir, 'src', 'local-gateway.ts'));
  fs.writeFileSync(
    path.join(dir, 'src', 'index.ts'),
    `import { Pool } from '@neondatabase/serverless';
import { useLocalGateway } from './local-gateway';
let pool: Pool | undefined; // the mistake: shared by every request of this isolate
export default {
  async fetch(request: Request, env: { DATABASE_URL: string; LOCAL_GATEWAY?: string }): Promise<Response> {
    if (new URL(request.url).pathname === '/__ready') return Response.json({ ready: true });
    useLocalGateway(env.LOCAL_GATEWAY);
    pool ??= new Pool({ connectionString: env.DATABASE_URL });
    const { rows } = await pool.query('SELECT 1 AS one');
    return Response.json(rows[0]);
  },
};
`,
  );
  await withWorker('global-pool', { dir, vars: driverVars(DB.websocket_transaction) }, async (w) => {
    const first = await w.call('GET', '/');
    assert.equal(first.status, 200, `the first request works: ${JSON.stringify(first.json)}`);
    // The second request's query would use the first request's WebSocket: workerd cancels it.
    const res = await fetch(`http://127.0.0.1:${w.port}/`, { signal: AbortSignal.timeout(60_000) });
    const text = await res.text();
    assert.notEqual(res.status, 200, `the second request should fail, got: ${text.slice(0, 200)}`);
    assert.match(text, /hung|different request/i, 'the runtime says why');
  });
});

test('drizzle: CRUD over neon-http, a project and its todos in one neon-serverless transaction', { timeout: 180_000 }, async () => {
  await applySchema('drizzle', DB.drizzle);
  await withWorker('drizzle', { vars: driverVars(DB.drizzle) }, async (w) => {
    const p = await w.expect(201, 'POST', '/projects', { body: { name: 'launch', todos: ['write', 'ship'] } });
    assert.deepEqual(p.todos.map((t) => [t.title, t.done, t.projectId]), [['write', false, p.id], ['ship', false, p.id]]);

    // The empty title breaks the CHECK after the project's insert: no project "broken" stays.
    const bad = await w.expect(400, 'POST', '/projects', { body: { name: 'broken', todos: ['ok', ''] } });
    assert.equal(bad.code, '23514', JSON.stringify(bad));
    assert.deepEqual(await ownerQuery(DB.drizzle, 'SELECT name FROM projects ORDER BY id'), [{ name: 'launch' }]);
    assert.equal((await w.expect(400, 'POST', '/projects', { body: { name: 'launch' } })).code, '23505');

    const added = await w.expect(201, 'POST', `/projects/${p.id}/todos`, { body: { title: 'celebrate' } });
    const done = await w.expect(200, 'PATCH', `/todos/${p.todos[0].id}`, { body: { done: true } });
    assert.equal(done.done, true);
    await w.expect(200, 'DELETE', `/todos/${p.todos[1].id}`);
    const read = await w.expect(200, 'GET', `/projects/${p.id}`);
    assert.deepEqual(read.todos.map((t) => [t.id, t.done]), [[p.todos[0].id, true], [added.id, false]]);
    await w.expect(404, 'GET', '/projects/999999');
    assert.equal((await w.expect(400, 'POST', '/projects/999999/todos', { body: { title: 'orphan' } })).code, '23503');
  });
});

test('jwt-rls: a user token as authToken; each user sees and deletes only their own notes', { timeout: 180_000 }, async () => {
  await addJwksRule();
  await applySchema('jwt-rls', DB.jwt_rls);
  const [alice, bob, expired] = [await token('alice'), await token('bob'), await token('alice', -120)];
  const as = (t) => ({ headers: { authorization: `Bearer ${t}` } });
  const vars = { DATABASE_AUTHENTICATED_URL: `postgresql://authenticated@${HOST}/${DB.jwt_rls}`, LOCAL_GATEWAY: GATEWAY };

  await withWorker('jwt-rls', { vars }, async (w) => {
    assert.deepEqual(await w.expect(200, 'GET', '/me', as(alice)), { user_id: 'alice' });
    const a1 = await w.expect(201, 'POST', '/notes', { body: { body: 'alice one' }, ...as(alice) });
    await w.expect(201, 'POST', '/notes', { body: { body: 'alice two' }, ...as(alice) });
    const b1 = await w.expect(201, 'POST', '/notes', { body: { body: 'bob one' }, ...as(bob) });
    assert.equal(a1.owner, 'alice');
    assert.equal(b1.owner, 'bob');

    const seen = async (t) => (await w.expect(200, 'GET', '/notes', as(t))).notes.map((n) => `${n.owner}:${n.body}`);
    assert.deepEqual(await seen(alice), ['alice:alice one', 'alice:alice two']);
    assert.deepEqual(await seen(bob), ['bob:bob one']);

    // Bob cannot delete Alice's note: it is invisible to him, and it stays.
    await w.expect(404, 'DELETE', `/notes/${a1.id}`, as(bob));
    assert.equal((await ownerQuery(DB.jwt_rls, 'SELECT count(*)::int AS n FROM user_notes WHERE id = $1', [a1.id]))[0].n, 1);
    await w.expect(200, 'DELETE', `/notes/${b1.id}`, as(bob));
    assert.deepEqual(await seen(bob), []);

    // No token, an expired one, one signed by another key, a forged claim: all 401.
    await w.expect(401, 'GET', '/notes');
    await w.expect(401, 'GET', '/notes', as(expired));
    const [h, claims] = alice.split('.');
    const forged = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(claims, 'base64url')), sub: 'bob' })).toString('base64url');
    await w.expect(401, 'GET', '/notes', as(`${h}.${forged}.${alice.split('.')[2]}`));
    assert.deepEqual(await seen(alice), ['alice:alice one', 'alice:alice two']);
  });
});

test('hyperdrive: node-postgres over TCP through a Hyperdrive binding to the gateway; a failed batch rolls back', { timeout: 180_000 }, async () => {
  await applySchema('hyperdrive', DB.hyperdrive);
  // The README's localConnectionString for another endpoint than the default: Hyperdrive passes
  // no `options`, so the endpoint travels in the password, which the gateway reads over TLS.
  const password = encodeURIComponent(`endpoint=${EP.id};${EP.password}`);
  const local = `postgresql://${EP.owner}:${password}@${GATEWAY}/${DB.hyperdrive}?sslmode=require`;
  const env = { CLOUDFLARE_HYPERDRIVE_LOCAL_CONNECTION_STRING_HYPERDRIVE: local };
  await withWorker('hyperdrive', { env }, async (w) => {
    const v = await w.expect(201, 'POST', '/visits', { body: { path: '/a' } });
    assert.equal(v.path, '/a');
    await w.expect(201, 'POST', '/visits/batch', { body: { paths: ['/a', '/b'] } });
    const bad = await w.expect(400, 'POST', '/visits/batch', { body: { paths: ['/c', 5] } });
    assert.equal(bad.code, '23502');
    assert.deepEqual((await w.expect(200, 'GET', '/visits')).paths, [
      { path: '/a', visits: 2 },
      { path: '/b', visits: 1 },
    ]);
    assert.equal((await ownerQuery(DB.hyperdrive, 'SELECT count(*)::int AS n FROM visits'))[0].n, 3, 'no row of the failed batch');
  });
});
