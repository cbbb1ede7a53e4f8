// JWT auth with row-level security (issue 15), end to end: the real driver's `authToken` over
// /sql (single queries and `sql.transaction`), the token as the password of a WebSocket `Pool`
// / `Client` and of a TCP session, Drizzle's Neon RLS helpers, forgery of the claims from SQL,
// the attack corpus of jwt-on-stock-postgres.md section 5, JWKS rotation / outage / kid flood,
// the gateway's JWT metrics, and a WebSocket session closed when its token expires.
//
// Everything runs on an endpoint this file creates through the wake service's admin API (and
// deletes at the end): an API role (the owner, with a password) and its database, and JWKS
// rules (POST /v1/endpoints/{id}/jwks) pointing at a JWKS server the test runs on 127.0.0.1
// (test/jwks-server.js; the gateway must run with --jwks-allow-http-loopback). Each rule has
// its own key set, URL and JWT role, so the rules' caches and unknown-kid rate limits do not
// interfere:
//
//   set     role_names          what for
//   main    [authenticated]     RLS, forgery, Drizzle, WebSocket, TCP, metrics, expiry
//   aud     [anonymous]         jwt_audience / jwt_issuer
//   corpus  [jwt_corpus]        the attack corpus
//   rot     [jwt_rot]           rotation
//   flood   [jwt_flood]         a flood of random kids
//   down    [jwt_down]          the JWKS server failing after a good fetch
//   dup     [jwt_dup]           two keys under one kid in one set
//   xdup    [jwt_xdup]          main's RSA kid published by another rule with another key
//
// The contract (fixed in /work/jwt-plan.md): claims reach SQL as `gw_auth.claims` (envelope)
// and `gw_auth.mac`, checked by auth.session()/auth.user_id()/auth.uid()/auth.jwt(); a
// failing auth.begin returns false; /sql rejections are 4xx in the driver's error shape with a
// generic message; session rejections are FATAL 28000/28P01.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import { Client, Pool } from '@neondatabase/serverless';
import { drizzle } from 'drizzle-orm/neon-http';
import { pgTable, serial, text } from 'drizzle-orm/pg-core';
import { sql as dsql, eq, asc } from 'drizzle-orm';
import { authenticatedRole, crudPolicy, authUid } from 'drizzle-orm/neon';
import {
  neon,
  neonConfig,
  NeonDbError,
  pg,
  requireEnv,
  GATEWAY_HOST,
  GATEWAY_PORT,
  uniqueName,
  captureError,
  errorSummary,
  scrapeMetrics,
  metricSum,
  sleep,
  waitFor,
} from './helpers.js';
import { WakeApi } from './stack.js';
import { startJwksServer, attackCorpus, hugeToken, nowSeconds, decode, compact, b64u } from './jwks-server.js';
import { drizzleKitSql, rejection, parseEnvelope, LEAKY } from './jwt-helpers.js';

const WAKE_URL = requireEnv('WAKE_URL').replace(/\/+$/, '');
const WAKE_ADMIN_TOKEN = requireEnv('WAKE_ADMIN_TOKEN');
const WAKE_PROXY_TOKEN = requireEnv('WAKE_PROXY_TOKEN');
const TLS_CA = fs.readFileSync(requireEnv('GATEWAY_TLS_CA'), 'utf8');

neonConfig.useSecureWebSocket = false;
neonConfig.wsProxy = (host, port) => `${GATEWAY_HOST}:${GATEWAY_PORT}/v2?address=${host}:${port}`;

// The HTTP status of every /sql request the driver makes, by bearer token (the driver hides
// the status of a 400 behind NeonDbError; the tests need it to tell 4xx from 5xx).
const statusByToken = new Map();
neonConfig.fetchFunction = async (url, init) => {
  const res = await fetch(url, init);
  const auth = init?.headers?.Authorization ?? init?.headers?.authorization;
  if (typeof auth === 'string' && auth.startsWith('Bearer ')) statusByToken.set(auth.slice(7), res.status);
  return res;
};

const api = new WakeApi(WAKE_URL, WAKE_ADMIN_TOKEN);
const proxyApi = new WakeApi(WAKE_URL, WAKE_PROXY_TOKEN);
const RUN = `${process.pid.toString(36)}${randomBytes(3).toString('hex')}`;

/** This file's endpoint: an API role (the tables' owner) with a password, and its database. */
const EP = {
  id: `jwt-${RUN}`,
  owner: `sdkt_jwt_owner_${RUN}`,
  password: randomBytes(12).toString('base64url'),
  database: `sdkt_jwt_db_${RUN}`,
};
const TODOS = uniqueName('jwt_todos');
const DZ_TODOS = uniqueName('jwt_dz_todos');
const AUDIENCE = `sdkt-aud-${RUN}`;
const ISSUER = `https://issuer.sdkt.test/${RUN}/`;
const ROLE = {
  corpus: 'jwt_corpus',
  rot: 'jwt_rot',
  flood: 'jwt_flood',
  down: 'jwt_down',
  dup: 'jwt_dup',
  xdup: 'jwt_xdup',
};

let srv; // the JWKS server
const sets = {}; // name -> KeySet
const rules = {}; // name -> the rule as POST answered it
let owner; // neon() as the owner (password)
const opened = []; // WebSocket clients and pools, and node-postgres clients, ended in after()

/** The Drizzle schema: Neon's RLS helpers (crudPolicy on authUid for authenticatedRole). */
const dzTodos = pgTable(
  DZ_TODOS,
  {
    id: serial('id').primaryKey(),
    userId: text('user_id').notNull().default(dsql`(auth.user_id())`),
    body: text('body').notNull(),
  },
  (t) => [crudPolicy({ role: authenticatedRole, read: authUid(t.userId), modify: authUid(t.userId) })],
);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const HOST = () => `${EP.id}.localtest.me`;

/** A connection string for `role` on this file's endpoint and database; no password unless given. */
function urlFor(role, password) {
  const auth = password === undefined ? encodeURIComponent(role) : `${encodeURIComponent(role)}:${encodeURIComponent(password)}`;
  return `postgresql://${auth}@${HOST()}:${GATEWAY_PORT}/${EP.database}`;
}

/** The driver's HTTP query function for `role` with `token` as authToken (what an app does). */
function asUser(token, role = 'authenticated') {
  return neon(urlFor(role), { authToken: token });
}

/** auth.user_id() over /sql with `token`. */
async function uidOver(sqlFn) {
  const rows = await sqlFn`SELECT auth.user_id() AS uid`;
  return rows[0].uid;
}

/** The claims material of the current request/session: envelope, mac, backend pid, uid. */
const MATERIAL_SQL = `SELECT current_setting('gw_auth.claims', true) AS env, current_setting('gw_auth.mac', true) AS mac,
  pg_backend_pid() AS pid, auth.user_id() AS uid, current_user AS usr, session_user AS sess`;

async function material(sqlFn) {
  const [r] = await sqlFn.query(MATERIAL_SQL);
  return r;
}

/**
 * A /sql request with `token` (as `role`) must be rejected: the driver's error, HTTP 4xx, a
 * generic message. Returns `{ status, message, code }`.
 */
async function mustReject(token, what, { role = 'authenticated', query = 'SELECT auth.user_id() AS uid' } = {}) {
  statusByToken.delete(token);
  let err;
  try {
    const rows = await asUser(token, role).query(query);
    assert.fail(`${what}: accepted (rows ${JSON.stringify(rows).slice(0, 200)})`);
  } catch (e) {
    if (e instanceof assert.AssertionError) throw e;
    err = e;
  }
  return rejection(err, statusByToken.get(token), what);
}

/** A WebSocket Client with `token` as the password of `role`; connected. */
async function wsAs(token, role = 'authenticated') {
  const c = new Client({ connectionString: urlFor(role, token) });
  c.on('error', () => {});
  opened.push(c);
  await within(c.connect(), 15_000, `WebSocket connect as ${role}`);
  return c;
}

/** `promise`, or a failure naming `what` after `ms` (a session that neither works nor fails). */
function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new assert.AssertionError({ message: `${what}: no outcome within ${ms} ms` })), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A WebSocket connect with `token` as the password must fail with FATAL 28000 / 28P01 (within 15 s). */
async function wsMustFail(token, what, role = 'authenticated') {
  const c = new Client({ connectionString: urlFor(role, token) });
  c.on('error', () => {});
  const err = await captureError(() =>
    within(
      (async () => {
        await c.connect();
        await c.query('SELECT auth.user_id()');
      })(),
      15_000,
      what,
    ),
  );
  if (err instanceof assert.AssertionError) throw err;
  c.end().catch(() => {});
  assert.ok(['28000', '28P01'].includes(err.code), `${what}: FATAL 28000/28P01, got ${err.code}: ${err.message}`);
  assert.doesNotMatch(err.message, LEAKY, `${what}: generic message`);
  return err;
}

/** True when `uid` is acceptable for a session of `self`: its own id or NULL. */
const ownOrNull = (uid, self) => uid === self || uid === null;

/** LEAKY, minus "expired": a session closed at its token's expiry may say so. */
const LEAKY_EXCEPT_EXPIRY = new RegExp(LEAKY.source.replace('expir|', ''), 'i');

/**
 * After an attack, a fresh request with `token` must see `expected`. The plan lets the request
 * that first meets a backend whose claims register was cleared (DISCARD ALL / SEQUENCES) fail
 * (auth.begin false ⇒ connection discarded, request fails), so up to `allowFailures` failed
 * attempts are tolerated; a success must be exactly `expected`. Returns the failures.
 */
async function seesOwnId(token, expected, { allowFailures = 0, role = 'authenticated' } = {}) {
  const failures = [];
  for (let attempt = 0; attempt <= allowFailures; attempt++) {
    try {
      const uid = await uidOver(asUser(token, role));
      assert.equal(uid, expected, `a fresh request as ${expected} sees ${JSON.stringify(uid)}`);
      return failures;
    } catch (err) {
      if (err instanceof assert.AssertionError) throw err;
      failures.push(err.message);
    }
  }
  assert.fail(`a fresh request as ${expected} failed ${failures.length} times: ${failures.join(' | ')}`);
}

/**
 * After statements that may leave a pooled backend with a cleared claims register (DISCARD
 * ALL / SEQUENCES, in a /sql request or in a session whose backend the gateway may pool):
 * `n` sequential requests as `expected`; each either fails (the plan discards such a backend
 * and fails that request; at most `maxFailures` in all) or sees exactly `expected`, and the
 * last one succeeds.
 */
async function settle(token, expected, { n = 6, maxFailures = 2 } = {}) {
  const failures = [];
  let last;
  for (let i = 0; i < n; i++) {
    last = await uidOver(asUser(token)).then(
      (uid) => {
        assert.equal(uid, expected, `request ${i} as ${expected} sees ${JSON.stringify(uid)}`);
        return 'ok';
      },
      (err) => {
        if (err instanceof assert.AssertionError) throw err;
        failures.push(err.message);
        return 'failed';
      },
    );
  }
  assert.ok(failures.length <= maxFailures, `${failures.length} failed requests as ${expected}: ${failures.join(' | ')}`);
  assert.equal(last, 'ok', `the last request as ${expected} failed: ${failures.at(-1)}`);
  return failures;
}

async function addRule(name, body) {
  const rule = await api.expect(201, 'POST', `/v1/endpoints/${EP.id}/jwks`, { body, timeoutMs: 120_000 });
  assert.match(rule.id ?? '', /^jwks-[0-9a-f]+$/, `rule id: ${JSON.stringify(rule)}`);
  rules[name] = rule;
  return rule;
}

/** Wait until at least `ms` have passed since the JWKS server last served `set` (bounded). */
async function quietSince(set, ms, maxWaitMs = 35_000) {
  const last = set.lastRequestAt;
  if (last === undefined) return 0;
  const wait = last + ms - Date.now();
  if (wait <= 0) return 0;
  assert.ok(wait <= maxWaitMs, `would wait ${wait} ms for ${set.name}`);
  await sleep(wait);
  return wait;
}

// ---------------------------------------------------------------------------
// Setup and cleanup
// ---------------------------------------------------------------------------

before(async () => {
  srv = await startJwksServer();
  sets.main = srv.addSet('main', ['RS256', 'ES256', 'EdDSA']);
  sets.aud = srv.addSet('aud', ['RS256']);
  sets.corpus = srv.addSet('corpus', ['RS256', 'ES256', 'EdDSA']);
  sets.rot = srv.addSet('rot', ['ES256']);
  sets.flood = srv.addSet('flood', ['EdDSA']);
  sets.down = srv.addSet('down', ['RS256']);
  sets.dup = srv.addSet('dup', ['ES256']);
  sets.dup.dupA = sets.dup.addKey('RS256', { kid: 'dup-rsa' });
  sets.dup.dupB = sets.dup.addKey('RS256', { kid: 'dup-rsa' });
  sets.xdup = srv.addSet('xdup', []);
  sets.xdup.shadow = sets.xdup.addKey('RS256', { kid: sets.main.kid('RS256') });

  const created = await api.create(EP.id, { suspend_timeout_seconds: -1 });
  assert.equal(created.id, EP.id);
  await api.createRole(EP.id, EP.owner, EP.password);
  await api.createDatabase(EP.id, EP.database, EP.owner);

  await addRule('main', { provider_name: 'test', jwks_url: sets.main.url, algorithms: ['RS256', 'ES256', 'EdDSA'], role_names: ['authenticated'] });
  await addRule('aud', {
    provider_name: 'test-aud',
    jwks_url: sets.aud.url,
    jwt_audience: AUDIENCE,
    jwt_issuer: ISSUER,
    algorithms: ['RS256'],
    role_names: ['anonymous'],
  });
  // no "algorithms": the default (RS256, ES256, EdDSA)
  await addRule('corpus', { provider_name: 'test-corpus', jwks_url: sets.corpus.url, role_names: [ROLE.corpus] });
  await addRule('rot', { provider_name: 'test-rot', jwks_url: sets.rot.url, algorithms: ['ES256'], role_names: [ROLE.rot] });
  await addRule('flood', { provider_name: 'test-flood', jwks_url: sets.flood.url, algorithms: ['EdDSA'], role_names: [ROLE.flood] });
  await addRule('down', { provider_name: 'test-down', jwks_url: sets.down.url, algorithms: ['RS256'], role_names: [ROLE.down] });
  await addRule('dup', { provider_name: 'test-dup', jwks_url: sets.dup.url, role_names: [ROLE.dup] });
  await addRule('xdup', { provider_name: 'test-xdup', jwks_url: sets.xdup.url, algorithms: ['RS256'], role_names: [ROLE.xdup] });

  // The owner's schema: a todos table with RLS on auth.user_id(), for role authenticated.
  owner = neon(urlFor(EP.owner, EP.password));
  for (const stmt of [
    `CREATE TABLE ${TODOS} (id serial PRIMARY KEY, owner text NOT NULL DEFAULT auth.user_id(), body text NOT NULL)`,
    `ALTER TABLE ${TODOS} ENABLE ROW LEVEL SECURITY`,
    `CREATE POLICY todos_select ON ${TODOS} FOR SELECT TO authenticated USING (owner = (SELECT auth.user_id()))`,
    `CREATE POLICY todos_insert ON ${TODOS} FOR INSERT TO authenticated WITH CHECK (owner = (SELECT auth.user_id()))`,
    `CREATE POLICY todos_update ON ${TODOS} FOR UPDATE TO authenticated USING (owner = (SELECT auth.user_id())) WITH CHECK (owner = (SELECT auth.user_id()))`,
    `CREATE POLICY todos_delete ON ${TODOS} FOR DELETE TO authenticated USING (owner = (SELECT auth.user_id()))`,
    `GRANT SELECT, INSERT, UPDATE, DELETE ON ${TODOS} TO authenticated`,
    `GRANT USAGE ON SEQUENCE ${TODOS}_id_seq TO authenticated`,
    ...drizzleKitSql(dzTodos),
    `GRANT SELECT, INSERT, UPDATE, DELETE ON ${DZ_TODOS} TO authenticated`,
    `GRANT USAGE ON SEQUENCE ${DZ_TODOS}_id_seq TO authenticated`,
  ]) {
    await owner.query(stmt);
  }

  // The rules whose caches the tests watch get their first (good) fetch now.
  for (const [name, alg] of [['rot', 'ES256'], ['flood', 'EdDSA'], ['down', 'RS256']]) {
    assert.equal(await uidOver(asUser(sets[name].token(`warm-${name}`, { alg }), ROLE[name])), `warm-${name}`, `warm-up of ${name}`);
    assert.ok(sets[name].requests >= 1, `the gateway fetched ${sets[name].url}`);
  }
}, { timeout: 180_000 });

after(async () => {
  // end() on a client the server already closed never resolves: bounded
  for (const c of opened) if (!c._ending && !c.ending && !c.ended) await Promise.race([c.end().catch(() => {}), sleep(2000)]);
  const status = await api.remove(EP.id);
  if (status !== 204 && status !== 404) console.error(`cleanup: DELETE ${EP.id} answered ${status}`);
  await srv?.stop();
});

// ---------------------------------------------------------------------------
// Configuration through the admin API
// ---------------------------------------------------------------------------

test('admin API: rules listed; proxy API shape; JWT roles are not API roles and cannot be made or named', { timeout: 60_000 }, async () => {
  const list = await api.expect(200, 'GET', `/v1/endpoints/${EP.id}/jwks`);
  assert.ok(Array.isArray(list.jwks), `GET …/jwks: {"jwks":[…]}: ${JSON.stringify(list)}`);
  assert.deepStrictEqual(list.jwks.map((r) => r.id).sort(), Object.values(rules).map((r) => r.id).sort());
  const main = list.jwks.find((r) => r.id === rules.main.id);
  assert.equal(main.jwks_url, sets.main.url);
  assert.equal(main.provider_name, 'test');
  assert.deepStrictEqual(main.role_names, ['authenticated']);
  const aud = list.jwks.find((r) => r.id === rules.aud.id);
  assert.equal(aud.jwt_audience, AUDIENCE);
  assert.equal(aud.jwt_issuer, ISSUER);

  const proxy = await proxyApi.expect(200, 'GET', `/proxy/api/v1/endpoints/${EP.id}/jwks`);
  const p = proxy.jwks.find((r) => r.id === rules.main.id);
  for (const k of ['id', 'jwks_url', 'provider_name', 'jwt_audience', 'role_names']) assert.ok(k in p, `proxy rule has ${k}: ${JSON.stringify(p)}`);
  assert.ok(proxy.jwt_login, 'jwt_login present when the endpoint has rules');
  assert.match(proxy.jwt_login.claims_key?.key ?? '', /^[0-9a-f]{64}$/);
  const loginRoles = proxy.jwt_login.roles.map((r) => r.name).sort();
  assert.deepStrictEqual(loginRoles, ['anonymous', 'authenticated', ...Object.values(ROLE)].sort());

  const ep = await api.expect(200, 'GET', `/v1/endpoints/${EP.id}`);
  assert.deepStrictEqual(ep.roles, [EP.owner], 'JWT roles are not API roles');

  const clash = await api.call('POST', `/v1/endpoints/${EP.id}/roles`, { body: { name: 'authenticated', password: 'whatever-123' } });
  assert.ok([400, 409].includes(clash.status), `an API role named like a JWT role: ${clash.status} ${clash.text}`);
  for (const name of [EP.owner, 'cloud_admin', 'pg_monitor', 'pg_read_all_data']) {
    const r = await api.call('POST', `/v1/endpoints/${EP.id}/jwks`, { body: { provider_name: 'bad', jwks_url: sets.main.url, role_names: [name] } });
    assert.ok([400, 409].includes(r.status), `a rule naming ${name}: ${r.status} ${r.text}`);
  }
  const bad = await api.call('POST', `/v1/endpoints/${EP.id}/jwks`, { body: { provider_name: 'bad', jwks_url: 'http://u:p@127.0.0.1:1/jwks.json' } });
  assert.ok(bad.status >= 400 && bad.status < 500, `userinfo in jwks_url: ${bad.status}`);
  // nothing extra was stored
  assert.equal((await api.expect(200, 'GET', `/v1/endpoints/${EP.id}/jwks`)).jwks.length, Object.keys(rules).length);
});

// ---------------------------------------------------------------------------
// RLS: two users, each transport
// ---------------------------------------------------------------------------

test('neon() with authToken: alice and bob (RS256, ES256, EdDSA) see and change only their rows', { timeout: 60_000 }, async () => {
  for (const alg of ['RS256', 'ES256', 'EdDSA']) {
    const aliceToken = sets.main.token('alice', { alg });
    const bobToken = sets.main.token('bob', { alg });
    const alice = asUser(aliceToken);
    const bob = asUser(bobToken);
    const who = await alice`SELECT auth.user_id() AS uid, auth.uid() AS uuid, auth.jwt() ->> 'sub' AS jwt_sub,
      auth.session() ->> 'sub' AS session_sub, current_user AS usr, session_user AS sess`;
    assert.deepStrictEqual(who, [{ uid: 'alice', uuid: null, jwt_sub: 'alice', session_sub: 'alice', usr: 'authenticated', sess: 'authenticated' }], alg);
    assert.equal(await uidOver(bob), 'bob', alg);

    const [a] = await alice.query(`INSERT INTO ${TODOS} (body) VALUES ($1) RETURNING owner, body`, [`alice ${alg}`]);
    assert.deepStrictEqual(a, { owner: 'alice', body: `alice ${alg}` }, 'owner defaults to auth.user_id()');
    const [b] = await bob.query(`INSERT INTO ${TODOS} (body) VALUES ($1) RETURNING owner`, [`bob ${alg}`]);
    assert.equal(b.owner, 'bob');

    for (const [sqlFn, self] of [[alice, 'alice'], [bob, 'bob']]) {
      const rows = await sqlFn.query(`SELECT owner, body FROM ${TODOS} ORDER BY id`);
      assert.ok(rows.length > 0 && rows.every((r) => r.owner === self), `${self} (${alg}) sees only their rows: ${JSON.stringify(rows)}`);
    }
    // bob cannot touch alice's rows, nor write rows as alice
    assert.deepStrictEqual(await bob.query(`UPDATE ${TODOS} SET body = 'pwned' WHERE owner = 'alice' RETURNING id`), []);
    assert.deepStrictEqual(await bob.query(`DELETE FROM ${TODOS} WHERE owner = 'alice' RETURNING id`), []);
    const asAlice = await captureError(() => bob.query(`INSERT INTO ${TODOS} (owner, body) VALUES ('alice', 'forged')`));
    assert.equal(asAlice.code, '42501', `RLS WITH CHECK: ${asAlice.message}`);
    const move = await captureError(() => bob.query(`UPDATE ${TODOS} SET owner = 'alice' WHERE owner = 'bob'`));
    assert.equal(move.code, '42501', `RLS WITH CHECK on update: ${move.message}`);
    // and can change their own
    const mine = await bob.query(`UPDATE ${TODOS} SET body = body || ' (edited)' WHERE body = $1 RETURNING owner`, [`bob ${alg}`]);
    assert.deepStrictEqual(mine, [{ owner: 'bob' }]);
  }
  // the owner (no RLS for the table owner) sees everything, untouched
  const all = await owner.query(`SELECT owner, count(*)::int AS n, bool_or(body LIKE '%pwned%' OR body = 'forged') AS bad FROM ${TODOS} GROUP BY owner ORDER BY owner`);
  assert.deepStrictEqual(all, [{ owner: 'alice', n: 3, bad: false }, { owner: 'bob', n: 3, bad: false }]);

  // auth.uid(): the sub when it is a canonical UUID
  const id = randomUUID();
  const [u] = await asUser(sets.main.token(id, { alg: 'EdDSA' }))`SELECT auth.uid() AS uuid, auth.user_id() AS uid`;
  assert.deepStrictEqual(u, { uuid: id, uid: id });
});

test('sql.transaction with authToken: every statement of the batch sees the user; RLS holds', { timeout: 30_000 }, async () => {
  const alice = asUser(sets.main.token('alice', { alg: 'ES256' }));
  const bob = asUser(sets.main.token('bob', { alg: 'RS256' }));
  const [ins, uid1, seen, uid2] = await alice.transaction((tx) => [
    tx`INSERT INTO ${tx.unsafe(TODOS)} (body) VALUES ('alice tx') RETURNING owner`,
    tx`SELECT auth.user_id() AS uid`,
    tx`SELECT count(*)::int AS n, count(*) FILTER (WHERE owner <> 'alice')::int AS others FROM ${tx.unsafe(TODOS)}`,
    tx`SELECT auth.user_id() AS uid`,
  ]);
  assert.deepStrictEqual(ins, [{ owner: 'alice' }]);
  assert.deepStrictEqual(uid1, [{ uid: 'alice' }]);
  assert.deepStrictEqual(uid2, [{ uid: 'alice' }]);
  assert.equal(seen[0].others, 0);
  assert.ok(seen[0].n >= 1);
  const [upd, del, mine] = await bob.transaction(
    [
      bob.query(`UPDATE ${TODOS} SET body = 'pwned' WHERE owner = 'alice' RETURNING id`),
      bob.query(`DELETE FROM ${TODOS} WHERE owner = 'alice' RETURNING id`),
      bob.query(`SELECT DISTINCT owner FROM ${TODOS}`),
    ],
    { isolationLevel: 'Serializable' },
  );
  assert.deepStrictEqual(upd, []);
  assert.deepStrictEqual(del, []);
  assert.deepStrictEqual(mine, [{ owner: 'bob' }]);
  const [[ro]] = await alice.transaction([alice`SELECT auth.user_id() AS uid, current_setting('transaction_read_only') AS ro`], { readOnly: true });
  assert.deepStrictEqual(ro, { uid: 'alice', ro: 'on' });
  // a failed transaction rolls back alice's insert and leaves the claims of the next one intact
  const err = await captureError(() => alice.transaction([alice`INSERT INTO ${alice.unsafe(TODOS)} (body) VALUES ('rolled back')`, alice`SELECT 1/0`]));
  assert.equal(err.code, '22012');
  assert.deepStrictEqual(await alice.query(`SELECT count(*)::int AS n FROM ${TODOS} WHERE body = 'rolled back'`), [{ n: 0 }]);
  assert.equal(await uidOver(alice), 'alice');
});

test('WebSocket Pool with the token as the password: each user sees and changes only their rows', { timeout: 60_000 }, async () => {
  const pools = {};
  for (const [user, alg] of [['alice', 'RS256'], ['bob', 'EdDSA']]) {
    const pool = new Pool({ connectionString: urlFor('authenticated', sets.main.token(user, { alg })), max: 2 });
    pool.on('error', () => {});
    opened.push(pool);
    pools[user] = pool;
  }
  try {
    for (const user of ['alice', 'bob']) {
      const pool = pools[user];
      const results = await Promise.all([1, 2, 3].map((i) => pool.query(`INSERT INTO ${TODOS} (body) VALUES ($1) RETURNING owner`, [`${user} ws ${i}`])));
      assert.ok(results.every((r) => r.rows[0].owner === user));
      const { rows } = await pool.query(`SELECT auth.user_id() AS uid, current_user AS usr, count(*)::int AS n, bool_and(owner = $1) AS only_mine FROM ${TODOS}`, [user]);
      assert.equal(rows[0].uid, user);
      assert.equal(rows[0].usr, 'authenticated');
      assert.equal(rows[0].only_mine, true);
    }
    assert.equal((await pools.bob.query(`UPDATE ${TODOS} SET body = 'pwned' WHERE owner = 'alice'`)).rowCount, 0);
    assert.equal((await pools.bob.query(`DELETE FROM ${TODOS} WHERE owner = 'alice'`)).rowCount, 0);
    // an interactive transaction on a pooled client
    const c = await pools.alice.connect();
    try {
      await c.query('BEGIN');
      await c.query(`INSERT INTO ${TODOS} (body) VALUES ('alice ws tx')`);
      const { rows } = await c.query(`SELECT auth.user_id() AS uid, count(*)::int AS n FROM ${TODOS} WHERE body = 'alice ws tx'`);
      assert.deepStrictEqual(rows, [{ uid: 'alice', n: 1 }]);
      await c.query('ROLLBACK');
    } finally {
      c.release();
    }
    assert.equal((await pools.alice.query(`SELECT count(*)::int AS n FROM ${TODOS} WHERE body = 'alice ws tx'`)).rows[0].n, 0);
  } finally {
    await Promise.all(Object.values(pools).map((p) => p.end()));
  }
  const all = await owner.query(`SELECT count(*)::int AS n FROM ${TODOS} WHERE body LIKE '%pwned%'`);
  assert.deepStrictEqual(all, [{ n: 0 }]);
});

test('TCP (node-postgres over TLS, options=endpoint=) with the token as the password', { timeout: 30_000 }, async () => {
  const c = new pg.Client({
    host: GATEWAY_HOST,
    port: GATEWAY_PORT,
    user: 'authenticated',
    password: sets.main.token('alice', { alg: 'ES256' }),
    database: EP.database,
    options: `endpoint=${EP.id}`,
    ssl: { ca: TLS_CA },
  });
  c.on('error', () => {});
  opened.push(c);
  await c.connect();
  const { rows } = await c.query(`SELECT auth.user_id() AS uid, bool_and(owner = 'alice') AS only_mine FROM ${TODOS}`);
  assert.deepStrictEqual(rows, [{ uid: 'alice', only_mine: true }]);
  await c.end();
});

test("Drizzle's Neon RLS helpers (crudPolicy, authUid, authenticatedRole) over neon-http with $withAuth and authToken", { timeout: 60_000 }, async () => {
  const aliceToken = sets.main.token('alice', { alg: 'EdDSA' });
  const bobToken = sets.main.token('bob', { alg: 'ES256' });
  // one db, a token per query chain ($withAuth), as Neon's docs show
  const db = drizzle({ client: neon(urlFor('authenticated')) });
  const a1 = await db.$withAuth(aliceToken).insert(dzTodos).values({ body: 'alice dz 1' }).returning();
  assert.equal(a1[0].userId, 'alice');
  await db.$withAuth(aliceToken).insert(dzTodos).values([{ body: 'alice dz 2' }, { body: 'alice dz 3' }]);
  // a client with the token in its options
  const bobDb = drizzle({ client: neon(urlFor('authenticated'), { authToken: bobToken }) });
  const b1 = await bobDb.insert(dzTodos).values({ body: 'bob dz 1' }).returning({ userId: dzTodos.userId });
  assert.deepStrictEqual(b1, [{ userId: 'bob' }]);

  const aliceRows = await db.$withAuth(aliceToken).select().from(dzTodos).orderBy(asc(dzTodos.id));
  assert.deepStrictEqual(aliceRows.map((r) => [r.userId, r.body]), [['alice', 'alice dz 1'], ['alice', 'alice dz 2'], ['alice', 'alice dz 3']]);
  const bobRows = await bobDb.select({ userId: dzTodos.userId, body: dzTodos.body }).from(dzTodos);
  assert.deepStrictEqual(bobRows, [{ userId: 'bob', body: 'bob dz 1' }]);

  // bob cannot change or delete alice's rows, nor insert as alice
  assert.deepStrictEqual(await bobDb.update(dzTodos).set({ body: 'pwned' }).where(eq(dzTodos.userId, 'alice')).returning(), []);
  assert.deepStrictEqual(await bobDb.delete(dzTodos).where(eq(dzTodos.userId, 'alice')).returning(), []);
  const forged = await captureError(() => bobDb.insert(dzTodos).values({ userId: 'alice', body: 'forged' }));
  assert.equal((forged.cause ?? forged).code, '42501', `insert as alice: ${forged.message}`);
  // alice can update hers; the same db object, other token, other result
  const upd = await db.$withAuth(aliceToken).update(dzTodos).set({ body: 'alice dz 1 (edited)' }).where(eq(dzTodos.body, 'alice dz 1')).returning({ userId: dzTodos.userId });
  assert.deepStrictEqual(upd, [{ userId: 'alice' }]);
  assert.deepStrictEqual((await db.$withAuth(bobToken).select({ body: dzTodos.body }).from(dzTodos)).map((r) => r.body), ['bob dz 1']);
  // no token at all: the password-less role is refused
  const none = await captureError(() => db.select().from(dzTodos));
  assert.ok(none, 'a query without a token fails');

  const everything = await owner.query(`SELECT user_id, body FROM ${DZ_TODOS} ORDER BY id`);
  assert.deepStrictEqual(everything.map((r) => [r.user_id, r.body]), [
    ['alice', 'alice dz 1 (edited)'],
    ['alice', 'alice dz 2'],
    ['alice', 'alice dz 3'],
    ['bob', 'bob dz 1'],
  ]);
});

test('pooled /sql requests alternating alice, bob, alice each see their own id; the claims envelope follows the contract', { timeout: 60_000 }, async () => {
  const tokens = { alice: sets.main.token('alice', { alg: 'RS256' }), bob: sets.main.token('bob', { alg: 'EdDSA' }) };
  const seenPids = new Map(); // pid -> users seen on it
  const lastCtr = new Map(); // pid -> last ctr
  for (let round = 0; round < 4; round++) {
    for (const user of ['alice', 'bob', 'alice']) {
      const m = await material(asUser(tokens[user]));
      assert.equal(m.uid, user, `round ${round}: ${user} sees ${m.uid}`);
      assert.equal(m.usr, 'authenticated');
      assert.equal(m.sess, 'authenticated');
      const env = parseEnvelope(m.env, m.mac);
      assert.equal(env.pid, m.pid, 'envelope pid = pg_backend_pid()');
      assert.equal(env.role, 'authenticated');
      assert.equal(env.claims.sub, user);
      // The claims expire with the token, plus the gateway's 30 s validation leeway (what the
      // gateway accepted, SQL accepts).
      assert.ok(env.exp <= decode(tokens[user]).payload.exp + 30 && env.exp > nowSeconds(), `envelope exp ${env.exp}`);
      if (lastCtr.has(m.pid)) assert.ok(env.ctr > lastCtr.get(m.pid), `ctr grows on backend ${m.pid}: ${lastCtr.get(m.pid)} -> ${env.ctr}`);
      lastCtr.set(m.pid, env.ctr);
      if (!seenPids.has(m.pid)) seenPids.set(m.pid, new Set());
      seenPids.get(m.pid).add(user);
    }
  }
  const shared = [...seenPids.values()].some((users) => users.size > 1);
  assert.ok(shared, `some backend served both users (the gateway pools JWT connections per role): ${JSON.stringify([...seenPids].map(([p, u]) => [p, [...u]]))}`);

  // what one user leaves in a pooled session is gone for the next (RESET ALL, DISCARD TEMP, …)
  const alice = asUser(tokens.alice);
  const bob = asUser(tokens.bob);
  for (let i = 0; i < 6; i++) {
    const [a] = await alice.query(`SELECT set_config('sdkt.secret', 'alice-secret', false) AS s, pg_backend_pid() AS pid`);
    await alice.query(`CREATE TEMP TABLE IF NOT EXISTS sdkt_shadow (x text)`).catch(() => {}); // TEMP may be granted to PUBLIC
    const [b] = await bob.query(`SELECT current_setting('sdkt.secret', true) AS s, to_regclass('pg_temp.sdkt_shadow') IS NOT NULL AS has_temp, pg_backend_pid() AS pid, auth.user_id() AS uid`);
    assert.equal(b.uid, 'bob');
    // whichever backend bob gets (alice's included, when a.pid = b.pid)
    assert.ok(b.s === null || b.s === '', `bob sees alice's setting on backend ${b.pid} (alice was on ${a.pid}): ${b.s}`);
    assert.equal(b.has_temp, false, `bob sees alice's temp table on backend ${b.pid}`);
  }
});

test('statements that must run alone in their transaction (VACUUM, SET TRANSACTION) work with a token on a pooled backend', { timeout: 30_000 }, async () => {
  // They refuse to follow another statement in their transaction (25001): the claims must
  // reach SQL in a round trip of their own, before the statement, on new and reused backends.
  const alice = asUser(sets.main.token('alice', { alg: 'EdDSA' }));
  for (let i = 0; i < 4; i++) {
    await alice.query(`VACUUM ${TODOS}`);
    await alice.query('SET TRANSACTION ISOLATION LEVEL SERIALIZABLE');
    const [r] = await alice.query('SELECT auth.user_id() AS uid');
    assert.equal(r.uid, 'alice');
  }
});

// ---------------------------------------------------------------------------
// Forgery from SQL
// ---------------------------------------------------------------------------

test('forgery over /sql in the same request: set_config of gw_auth.claims / gw_auth.mac never yields another user', { timeout: 60_000 }, async () => {
  const aliceToken = sets.main.token('alice', { alg: 'RS256' });
  const bobToken = sets.main.token('bob', { alg: 'RS256' });
  const alice = asUser(aliceToken);
  const mb = await material(asUser(bobToken));
  assert.equal(mb.uid, 'bob');
  const bobEnv = parseEnvelope(mb.env, mb.mac);
  const ma = await material(alice);
  const aliceEnv = parseEnvelope(ma.env, ma.mac);
  // alice's own envelope with bob's claims (and the pid/bs/ctr of her backend), under her mac
  const edited = JSON.stringify({ ...aliceEnv, claims: { ...aliceEnv.claims, sub: 'bob' } });
  const editedCtr = JSON.stringify({ ...aliceEnv, ctr: aliceEnv.ctr + 1000, claims: { ...aliceEnv.claims, sub: 'bob' } });
  const cases = [
    ["bob's real envelope and mac", mb.env, mb.mac],
    ["alice's envelope edited to sub bob, alice's mac", edited, ma.mac],
    ["alice's envelope edited to sub bob, a higher ctr, alice's mac", editedCtr, ma.mac],
    ["bob's envelope with a made-up mac", mb.env, `v1.1.${'0'.repeat(64)}`],
    ["bob's envelope with the pid rewritten to this backend", JSON.stringify({ ...bobEnv, pid: 0 }), mb.mac],
    ['bare claims (PostgREST style)', JSON.stringify({ sub: 'bob', role: 'authenticated' }), ''],
  ];
  const observed = [];
  for (const [what, env, mac] of cases) {
    for (const local of [false, true]) {
      // two statements in one transaction: set, then read
      const [, , r] = await alice.transaction([
        alice`SELECT set_config('gw_auth.claims', ${env}, ${local})`,
        alice`SELECT set_config('gw_auth.mac', ${mac}, ${local})`,
        alice`SELECT auth.user_id() AS uid, auth.jwt() ->> 'sub' AS jwt_sub, auth.session() ->> 'sub' AS session_sub`,
      ]);
      observed.push([what, local, r[0]]);
      for (const v of Object.values(r[0])) assert.ok(ownOrNull(v, 'alice'), `${what} (is_local ${local}): ${JSON.stringify(r[0])}`);
      // one statement: set and read in the same SELECT, in both orders
      const [s1] = await alice.query(`SELECT set_config('gw_auth.claims', $1, $3), set_config('gw_auth.mac', $2, $3), auth.user_id() AS uid`, [env, mac, local]);
      assert.ok(ownOrNull(s1.uid, 'alice'), `${what}, single statement: ${s1.uid}`);
      const [s2] = await alice.query(
        `WITH s AS MATERIALIZED (SELECT set_config('gw_auth.claims', $1, $3) AS a, set_config('gw_auth.mac', $2, $3) AS b) SELECT auth.user_id() AS uid FROM s`,
        [env, mac, local],
      );
      assert.ok(ownOrNull(s2.uid, 'alice'), `${what}, CTE: ${s2.uid}`);
      const [s3] = await alice.query(`SELECT auth.user_id() AS uid FROM (SELECT set_config('gw_auth.claims', $1, $3), set_config('gw_auth.mac', $2, $3)) s`, [env, mac, local]);
      assert.ok(ownOrNull(s3.uid, 'alice'), `${what}, subquery: ${s3.uid}`);
      // RLS agrees: nothing of bob's is visible
      const [s4] = await alice.query(
        `WITH s AS MATERIALIZED (SELECT set_config('gw_auth.claims', $1, $3) AS a, set_config('gw_auth.mac', $2, $3) AS b) SELECT count(*)::int AS n FROM ${TODOS}, s WHERE owner = 'bob'`,
        [env, mac, local],
      );
      assert.equal(s4.n, 0, `${what}: bob's rows through RLS`);
    }
  }
  assert.ok(observed.length === cases.length * 2);
  // and nothing sticks: fresh requests see their own ids
  await seesOwnId(aliceToken, 'alice');
  await seesOwnId(bobToken, 'bob');
});

test('forgery: writing into auth.* and gw_auth.*, reading the HMAC key, signalling other backends: all refused', { timeout: 60_000 }, async () => {
  const alice = asUser(sets.main.token('alice', { alg: 'ES256' }));
  const attempts = [
    'SELECT * FROM gw_auth.keys',
    `INSERT INTO gw_auth.keys VALUES (99, '\\x00', '\\x00', NULL)`,
    'UPDATE gw_auth.keys SET not_after = NULL',
    'DELETE FROM gw_auth.keys',
    "SELECT setval('gw_auth.reg', 1)",
    "SELECT nextval('gw_auth.reg')",
    `CREATE OR REPLACE FUNCTION auth.user_id() RETURNS text LANGUAGE sql AS $$ SELECT 'bob' $$`,
    `CREATE OR REPLACE FUNCTION auth.session() RETURNS jsonb LANGUAGE sql AS $$ SELECT '{"sub":"bob"}'::jsonb $$`,
    `CREATE FUNCTION auth.sdkt_evil() RETURNS int LANGUAGE sql AS 'SELECT 1'`,
    'CREATE TABLE auth.sdkt_t (x int)',
    'CREATE TABLE gw_auth.sdkt_t (x int)',
    'ALTER FUNCTION auth.user_id() OWNER TO authenticated',
    'ALTER FUNCTION auth.user_id() SECURITY INVOKER',
    'DROP FUNCTION auth.session()',
    'ALTER SCHEMA auth RENAME TO sdkt_auth2',
    'GRANT USAGE ON SCHEMA gw_auth TO authenticated',
    `CREATE FUNCTION public.sdkt_uid() RETURNS text LANGUAGE sql AS $$ SELECT 'bob' $$`,
    'SELECT pg_cancel_backend(pg_backend_pid())',
    'SELECT pg_terminate_backend(pg_backend_pid())',
  ];
  for (const text of attempts) {
    const err = await captureError(() => alice.query(text));
    assert.ok(err instanceof NeonDbError, `${text}: ${err}`);
    assert.ok(typeof err.code === 'string' && /^(42501|42P01|42883|3F000|25006|0A000)$/.test(err.code), `${text}: a Postgres privilege error, got ${err.code}: ${err.message}`);
    assert.equal(await uidOver(alice), 'alice', `after ${text}`);
  }
  const [begin] = await alice.query(`SELECT auth.begin('{}', 'v1.1.${'0'.repeat(64)}') AS ok, auth.user_id() AS uid`);
  assert.equal(begin.ok, false, 'auth.begin with junk returns false');
  assert.ok(ownOrNull(begin.uid, 'alice'));
  // a pg_temp function does not shadow what auth.* calls (search_path = pg_catalog, pg_temp)
  const shadow = await alice
    .transaction([
      alice`CREATE FUNCTION pg_temp.pg_backend_pid() RETURNS int LANGUAGE sql AS 'SELECT 0'`,
      alice`CREATE FUNCTION pg_temp.sha256(bytea) RETURNS bytea LANGUAGE sql AS $$ SELECT '\\x00'::bytea $$`,
      alice`SELECT auth.user_id() AS uid`,
    ])
    .then((r) => r[2][0].uid, (e) => `error ${e.code}`);
  assert.ok(shadow === 'alice' || shadow === null || /^error /.test(shadow), `pg_temp shadowing: ${shadow}`);
  await seesOwnId(sets.main.token('bob', { alg: 'EdDSA' }), 'bob');
});

test("forgery: replaying an earlier request's gw_auth material with auth.begin, on the same backend and on another", { timeout: 60_000 }, async () => {
  const aliceToken = sets.main.token('alice', { alg: 'EdDSA' });
  const bobToken = sets.main.token('bob', { alg: 'EdDSA' });
  const alice = asUser(aliceToken);
  const mb = await material(asUser(bobToken));
  assert.equal(mb.uid, 'bob');
  const replay = async (sqlFn, env, mac) => {
    const r = await sqlFn
      .transaction([sqlFn`SELECT auth.begin(${env}, ${mac}) AS ok`, sqlFn`SELECT auth.user_id() AS uid, pg_backend_pid() AS pid`])
      .then(([[b], [u]]) => ({ ok: b.ok, uid: u.uid, pid: u.pid }), (e) => ({ error: e }));
    if (r.error) assert.ok(r.error instanceof NeonDbError && r.error.code, `a replay fails only as a Postgres error: ${r.error}`);
    else assert.equal(r.ok, false, `auth.begin accepted replayed material: ${JSON.stringify(r)}`);
    return r;
  };
  let samePid = 0;
  let otherPid = 0;
  for (let i = 0; i < 20 && (samePid === 0 || otherPid === 0); i++) {
    // one replay alone (likely on the backend bob just used), then three at once (several backends)
    const batch = i % 2 === 0 ? [await replay(alice, mb.env, mb.mac)] : await Promise.all([1, 2, 3].map(() => replay(alice, mb.env, mb.mac)));
    for (const r of batch) {
      if (r.error) continue;
      assert.ok(ownOrNull(r.uid, 'alice'), `after replaying bob's material: ${r.uid}`);
      if (r.pid === mb.pid) samePid++;
      else otherPid++;
    }
    // bob makes fresh material on whatever backend he gets
    await uidOver(asUser(bobToken));
  }
  assert.ok(samePid > 0, "bob's material was replayed on bob's own (pooled) backend at least once");
  // alice replays her own older material (a lower ctr) on the same backend
  const ma = await material(alice);
  for (let i = 0; i < 10; i++) {
    const r = await replay(alice, ma.env, ma.mac);
    if (!r.error) assert.ok(ownOrNull(r.uid, 'alice'));
  }
  // a WebSocket session (a backend of its own) replays bob's /sql material
  const c = await wsAs(aliceToken);
  const { rows } = await c.query('SELECT auth.begin($1, $2) AS ok, pg_backend_pid() AS pid', [mb.env, mb.mac]);
  assert.equal(rows[0].ok, false);
  assert.ok(ownOrNull((await c.query('SELECT auth.user_id() AS uid')).rows[0].uid, 'alice'));
  if (rows[0].pid !== mb.pid) otherPid++;
  assert.ok(otherPid > 0, 'a replay on another backend happened');
  // bob's material as a set_config in that session
  await c.query(`SELECT set_config('gw_auth.claims', $1, false), set_config('gw_auth.mac', $2, false)`, [mb.env, mb.mac]);
  assert.ok(ownOrNull((await c.query('SELECT auth.user_id() AS uid')).rows[0].uid, 'alice'));
  await c.end();
  await seesOwnId(aliceToken, 'alice');
  await seesOwnId(bobToken, 'bob');
});

const SESSION_ATTACKS = (ownerRole) => [
  'RESET ALL',
  'DISCARD ALL',
  'DISCARD SEQUENCES',
  'DISCARD PLANS',
  'RESET ROLE',
  `SET ROLE ${ownerRole}`,
  // The compute's superuser (the endpoint has no `postgres` role).
  'SET ROLE cloud_admin',
  `SET SESSION AUTHORIZATION ${ownerRole}`,
  'SET SESSION AUTHORIZATION cloud_admin',
  'RESET SESSION AUTHORIZATION',
  "SET gw_auth.claims = ''",
  'RESET gw_auth.claims',
  "SELECT set_config('role', 'cloud_admin', false)",
];

test('forgery over /sql: RESET ALL, DISCARD ALL, RESET ROLE, SET ROLE, SET SESSION AUTHORIZATION, then auth.user_id()', { timeout: 60_000 }, async () => {
  const aliceToken = sets.main.token('alice', { alg: 'ES256' });
  const bobToken = sets.main.token('bob', { alg: 'ES256' });
  const alice = asUser(aliceToken);
  const mb = await material(asUser(bobToken));
  const notes = [];
  let discarded = false; // a DISCARD ran: a pooled backend may fail the next request that meets it
  for (const stmt of SESSION_ATTACKS(EP.owner)) {
    // as a request of its own (DISCARD cannot run in a transaction block); a failure without a
    // Postgres code (a backend whose register a DISCARD cleared) is retried once
    let alone = await alice.query(stmt).then(() => 'ok', (e) => `error ${e.code}`);
    if (alone === 'error undefined' && discarded) alone = await alice.query(stmt).then(() => 'ok', (e) => `error ${e.code}`);
    // in one transaction with the read, and with bob's material installed first
    const inTx = await alice
      .transaction([
        alice`SELECT set_config('gw_auth.claims', ${mb.env}, false), set_config('gw_auth.mac', ${mb.mac}, false)`,
        alice.query(stmt),
        alice`SELECT auth.user_id() AS uid, current_user AS usr, session_user AS sess`,
      ])
      .then((r) => r[2][0], (e) => ({ error: e.code ?? e.message }));
    // a failed request leaks nothing (e.g. DISCARD in a transaction block is 25001, or the
    // request that meets a backend whose register a DISCARD cleared fails); a result must be
    // alice's id or NULL, still as authenticated
    if (!inTx.error) {
      assert.ok(ownOrNull(inTx.uid, 'alice'), `${stmt} in a transaction: ${JSON.stringify(inTx)}`);
      assert.equal(inTx.usr, 'authenticated', `${stmt}: current_user`);
      assert.equal(inTx.sess, 'authenticated', `${stmt}: session_user`);
    }
    // the next requests: each user sees their own id (one failed request is tolerated after
    // statements that clear the claims register: the plan discards that backend)
    if (/DISCARD (ALL|SEQUENCES)/.test(stmt)) discarded = true;
    const tolerate = discarded ? 1 : 0;
    const fa = await seesOwnId(aliceToken, 'alice', { allowFailures: tolerate });
    const fb = await seesOwnId(bobToken, 'bob', { allowFailures: tolerate });
    notes.push({ stmt, alone, inTx, failures: fa.length + fb.length });
  }
  await settle(aliceToken, 'alice');
  await settle(bobToken, 'bob');
  const refused = notes.filter((n) => /SET (ROLE|SESSION AUTHORIZATION) /.test(n.stmt) && !/RESET/.test(n.stmt));
  for (const n of refused) assert.match(n.alone, /^error 42501$/, `${n.stmt} is refused: ${JSON.stringify(n)}`);
});

test('forgery in a WebSocket session: set_config, auth.begin replay, RESET/DISCARD/SET ROLE/SESSION AUTHORIZATION', { timeout: 60_000 }, async () => {
  const aliceToken = sets.main.token('alice', { alg: 'RS256' });
  const bobToken = sets.main.token('bob', { alg: 'RS256' });
  const mb = await material(asUser(bobToken));
  const bobWs = await wsAs(bobToken);
  const c = await wsAs(aliceToken);
  // auth.user_id() after tampering: alice, NULL, or a Postgres error (auth.session() has no
  // EXCEPTION block: after DISCARD the register is unset and currval may raise); never bob
  const uid = async () =>
    c.query('SELECT auth.user_id() AS uid').then(
      (r) => r.rows[0].uid,
      (e) => {
        assert.ok(e.code, `a failed read is a Postgres error: ${e.message}`);
        return null;
      },
    );
  assert.equal(await uid(), 'alice');
  const mbWs = (await bobWs.query(MATERIAL_SQL)).rows[0];
  assert.equal(mbWs.uid, 'bob');
  for (const [env, mac, what] of [
    [mb.env, mb.mac, "bob's /sql material"],
    [mbWs.env, mbWs.mac, "bob's live WebSocket session's material"],
  ]) {
    await c.query(`SELECT set_config('gw_auth.claims', $1, false), set_config('gw_auth.mac', $2, false)`, [env, mac]);
    assert.ok(ownOrNull(await uid(), 'alice'), `set_config with ${what}`);
    const { rows } = await c.query('SELECT auth.begin($1, $2) AS ok', [env, mac]);
    assert.equal(rows[0].ok, false, `auth.begin with ${what}`);
    assert.ok(ownOrNull(await uid(), 'alice'), `auth.begin with ${what}`);
  }
  for (const stmt of SESSION_ATTACKS(EP.owner)) {
    await c.query(`SELECT set_config('gw_auth.claims', $1, false), set_config('gw_auth.mac', $2, false)`, [mbWs.env, mbWs.mac]);
    const r = await c.query(stmt).then(() => 'ok', (e) => `error ${e.code}`);
    if (/^SET (ROLE|SESSION AUTHORIZATION) /.test(stmt)) assert.equal(r, 'error 42501', `${stmt} in a session`);
    assert.ok(ownOrNull(await uid(), 'alice'), `${stmt} in a session`);
    const { rows } = await c.query('SELECT current_user AS usr, session_user AS sess');
    assert.deepStrictEqual(rows[0], { usr: 'authenticated', sess: 'authenticated' }, `${stmt}: still authenticated`);
    // in a transaction block too
    await c.query('BEGIN');
    const t = await c.query(stmt).then(() => 'ok', (e) => `error ${e.code}`);
    if (t === 'ok') assert.ok(ownOrNull(await uid(), 'alice'), `${stmt} in BEGIN`);
    await c.query('ROLLBACK');
  }
  // bob's live session was never affected
  assert.equal((await bobWs.query('SELECT auth.user_id() AS uid')).rows[0].uid, 'bob');
  await c.end();
  await bobWs.end();
  // alice's session ran DISCARD ALL: if the gateway pools its backend, one later request may fail
  await settle(aliceToken, 'alice');
  await settle(bobToken, 'bob');
});

// ---------------------------------------------------------------------------
// Rejections: the attack corpus, role binding, passwords
// ---------------------------------------------------------------------------

test('the attack corpus over /sql: every token rejected with a 4xx, one generic error, the attacker URLs never fetched', { timeout: 60_000 }, async () => {
  const corpus = attackCorpus(srv, sets.corpus, 'mallory');
  const attackerBefore = srv.attackerRequests;
  const outcomes = [];
  for (const { name, token } of corpus) outcomes.push({ name, ...(await mustReject(token, name, { role: ROLE.corpus })) });
  // a valid token of this rule works, so the rejections were about the tokens
  assert.equal(await uidOver(asUser(sets.corpus.token('mallory', { alg: 'EdDSA' }), ROLE.corpus)), 'mallory');
  // one indistinguishable answer for all of them
  const shapes = new Map();
  for (const o of outcomes) {
    const key = JSON.stringify({ status: o.status, message: o.message, code: o.code });
    if (!shapes.has(key)) shapes.set(key, []);
    shapes.get(key).push(o.name);
  }
  assert.equal(shapes.size, 1, `the rejections differ (they must not say which check failed): ${JSON.stringify([...shapes].map(([k, v]) => [k, v.slice(0, 5)]), null, 1)}`);
  assert.equal(srv.attackerRequests, attackerBefore, 'jku / x5u / jwk were never fetched');
  assert.equal(srv.attackerRequests, 0);
});

test('a 1 MB token is refused without a 5xx; the gateway stays healthy', { timeout: 30_000 }, async () => {
  const token = hugeToken(sets.corpus, 'mallory', 1024 * 1024);
  statusByToken.delete(token);
  const err = await captureError(() => asUser(token, ROLE.corpus)`SELECT 1`);
  const status = statusByToken.get(token);
  if (status === undefined) {
    // the gateway may close the connection on an oversized header before the client finished sending
    assert.match(err.message, /^Error connecting to database/, `no answer, then only a connection error: ${err.message}`);
  } else {
    assert.ok(status >= 400 && status < 500, `HTTP ${status}: ${err.message.slice(0, 300)}`);
  }
  assert.equal(await uidOver(asUser(sets.corpus.token('mallory'), ROLE.corpus)), 'mallory', 'still serving');
});

test('role binding: the role must be in the matching rule\'s role_names; JWT roles have no usable password', { timeout: 60_000 }, async () => {
  const mainToken = sets.main.token('alice', { alg: 'RS256' });
  const audToken = sets.aud.token('alice', { claims: { aud: AUDIENCE, iss: ISSUER } });
  const cases = [
    ['main token as anonymous (main lists only authenticated)', mainToken, 'anonymous'],
    ['aud-rule token as authenticated (that rule lists only anonymous)', audToken, 'authenticated'],
    ['main token as the owner (an API role)', mainToken, EP.owner],
    ['main token as postgres', mainToken, 'postgres'],
    ['main token as cloud_admin', mainToken, 'cloud_admin'],
    ['main token as Authenticated (other case)', mainToken, 'Authenticated'],
    ['main token as another rule\'s role', mainToken, ROLE.corpus],
  ];
  for (const [what, token, role] of cases) await mustReject(token, what, { role });
  assert.equal(await uidOver(asUser(mainToken)), 'alice', 'the same token as authenticated works');
  assert.equal(await uidOver(asUser(audToken, 'anonymous')), 'alice', 'the aud token as anonymous works');

  // no token: a password-less connection string is refused
  const noToken = await captureError(() => neon(urlFor('authenticated'))`SELECT 1`);
  assert.ok(noToken instanceof NeonDbError, `${noToken}`);
  assert.doesNotMatch(noToken.message, /^Server error \(HTTP status 5/);
  // a password login as a JWT role is impossible, whatever the password
  for (const role of ['authenticated', 'anonymous']) {
    for (const password of ['guess', 'authenticated', '']) {
      const err = await captureError(() => neon(urlFor(role, password))`SELECT 1`);
      assert.ok(err instanceof NeonDbError, `${role}/${password}: ${err}`);
      assert.match(err.message, /password authentication failed|authentication failed/, `${role} with a password over /sql: ${err.message}`);
      assert.doesNotMatch(err.message, /^Server error \(HTTP status 5/);
    }
    await wsMustFail('guess', `${role} with a password over WebSocket`, role);
  }
  // the wrong kinds of Authorization
  for (const [what, header] of [
    ['Basic', `Basic ${Buffer.from('authenticated:x').toString('base64')}`],
    ['empty Bearer', 'Bearer '],
    ['Bearer with junk', 'Bearer not.a.jwt'],
  ]) {
    const res = await fetch(`http://${GATEWAY_HOST}:${GATEWAY_PORT}/sql`, {
      method: 'POST',
      headers: { 'Neon-Connection-String': urlFor('authenticated'), Authorization: header, 'content-type': 'application/json' },
      body: JSON.stringify({ query: 'SELECT 1', params: [] }),
      signal: AbortSignal.timeout(10_000),
    });
    const body = await res.text();
    assert.ok(res.status >= 400 && res.status < 500, `${what}: HTTP ${res.status} ${body.slice(0, 200)}`);
    assert.doesNotMatch(body, LEAKY, `${what}: generic`);
  }
});

test('WebSocket sessions refuse bad tokens with FATAL 28000/28P01', { timeout: 30_000 }, async () => {
  const now = nowSeconds();
  await wsMustFail(sets.main.sign({ alg: 'RS256', payload: { sub: 'alice', iat: now - 7200, exp: now - 3600 } }), 'expired');
  await wsMustFail(compact({ alg: 'none', typ: 'JWT', kid: sets.main.kid('RS256') }, { sub: 'alice', exp: now + 600 }), 'alg none');
  await wsMustFail(sets.main.token('alice'), 'role not in role_names', 'anonymous');
  await wsMustFail(sets.main.token('alice', { kid: `nope-${RUN}`, key: sets.main.keys.get(sets.main.kid('RS256')) }), 'unknown kid');
});

test('jwt_audience and jwt_issuer: the right ones pass; wrong, missing or empty ones are refused', { timeout: 30_000 }, async () => {
  const tok = (claims) => sets.aud.token('carol', { claims });
  assert.equal(await uidOver(asUser(tok({ aud: AUDIENCE, iss: ISSUER }), 'anonymous')), 'carol');
  assert.equal(await uidOver(asUser(tok({ aud: ['someone-else', AUDIENCE], iss: ISSUER }), 'anonymous')), 'carol', 'aud array containing ours');
  for (const [what, claims] of [
    ['wrong aud', { aud: `${AUDIENCE}-x`, iss: ISSUER }],
    ['aud missing', { iss: ISSUER }],
    ['aud empty array', { aud: [], iss: ISSUER }],
    ['aud a number', { aud: 1, iss: ISSUER }],
    ['wrong iss', { aud: AUDIENCE, iss: `${ISSUER}x` }],
    ['iss missing', { aud: AUDIENCE }],
    ['iss of another case', { aud: AUDIENCE, iss: ISSUER.toUpperCase() }],
  ]) {
    await mustReject(tok(claims), what, { role: 'anonymous' });
  }
});

test('duplicate kids: a second key under a kid of the same set is never tried; a kid shared across rules stays per rule', { timeout: 30_000 }, async () => {
  const { dupA, dupB } = sets.dup;
  // B (the second key published under "dup-rsa") must not verify: a validator takes the first
  // key or refuses the set, it never tries every key
  await mustReject(sets.dup.token('dave', { kid: 'dup-rsa', key: dupB }), 'the second key under a duplicate kid', { role: ROLE.dup });
  // A: either outcome is allowed (first key wins, or the set is refused), but never a 5xx
  const firstToken = sets.dup.token('dave', { kid: 'dup-rsa', key: dupA });
  const a = await asUser(firstToken, ROLE.dup)
    .query('SELECT auth.user_id() AS uid')
    .then((r) => r[0].uid, (e) => rejection(e, statusByToken.get(firstToken), 'first key under a duplicate kid'));
  assert.ok(a === 'dave' || typeof a === 'object', `first key: ${JSON.stringify(a)}`);

  // main's RSA kid is also published by rule xdup, with another key
  const kid = sets.main.kid('RS256');
  const shadow = sets.xdup.shadow;
  await mustReject(sets.xdup.token('erin', { kid, key: shadow }), "xdup's key under main's kid, as authenticated", { role: 'authenticated' });
  await mustReject(sets.main.token('erin', { kid }), "main's key as xdup's role", { role: ROLE.xdup });
  assert.equal(await uidOver(asUser(sets.xdup.token('erin', { kid, key: shadow }), ROLE.xdup)), 'erin', "xdup's key as xdup's role");
  assert.equal(await uidOver(asUser(sets.main.token('erin', { kid }))), 'erin', "main's key as authenticated");
});

// ---------------------------------------------------------------------------
// JWKS: rotation, outage, flood
// ---------------------------------------------------------------------------

test('JWKS down after a good fetch: known kids keep working from the cache (hanging, down, 500)', { timeout: 40_000 }, async () => {
  const down = sets.down;
  const good = () => asUser(down.token('grace', { alg: 'RS256' }), ROLE.down);
  assert.equal(await uidOver(good()), 'grace');
  try {
    // A provider that never answers. The last fetch of this set was the warm-up in before()
    // (more than 30 s ago by now), so an unknown kid makes the gateway try: that request ends
    // within the fetch timeout (connect 2 s / total 5 s), and known kids are not held up.
    const quiet = Date.now() - (down.lastRequestAt ?? 0);
    const attemptsBefore = down.requests;
    down.mode = 'hang';
    const t0 = Date.now();
    const slow = mustReject(down.token('grace', { kid: `hang-${RUN}` }), 'unknown kid while JWKS hangs', { role: ROLE.down }).then(() => Date.now() - t0);
    await sleep(300);
    const t1 = Date.now();
    assert.equal(await uidOver(good()), 'grace', 'a known kid while a refresh hangs');
    assert.ok(Date.now() - t1 < 4000, `the known kid waited ${Date.now() - t1} ms behind the hanging refresh`);
    const took = await slow;
    assert.ok(took < 20_000, `the unknown-kid request took ${took} ms`);
    if (quiet > 31_000) assert.ok(down.requests > attemptsBefore, `the gateway tried to refetch (quiet for ${quiet} ms before)`);
    assert.equal(await uidOver(good()), 'grace', 'cached key after a timed-out refresh');
    // connection refused-like (socket destroyed) and HTTP 500 with HTML: same story
    for (const mode of ['down', '500']) {
      down.mode = mode;
      for (let i = 0; i < 3; i++) assert.equal(await uidOver(good()), 'grace', `JWKS ${mode}: cached key`);
      await mustReject(down.token('grace', { kid: `gone-${mode}-${RUN}` }), `unknown kid while JWKS ${mode}`, { role: ROLE.down });
      assert.equal(await uidOver(good()), 'grace', `JWKS ${mode}: cached key after an unknown kid`);
    }
  } finally {
    down.mode = 'ok';
  }
  assert.equal(await uidOver(good()), 'grace');
});

test('a flood of 100 random kids: all refused, at most one JWKS refetch per 30 s, good tokens unaffected', { timeout: 60_000 }, async () => {
  const flood = sets.flood;
  const signer = flood.keys.get(flood.kid('EdDSA'));
  const before = flood.requests;
  const t0 = Date.now();
  const tokens = Array.from({ length: 100 }, (_, i) => flood.token('heidi', { alg: 'EdDSA', kid: `rnd-${i}-${randomBytes(8).toString('hex')}`, key: signer }));
  for (let i = 0; i < tokens.length; i += 20) {
    await Promise.all(tokens.slice(i, i + 20).map((t, j) => mustReject(t, `random kid ${i + j}`, { role: ROLE.flood })));
  }
  const took = Date.now() - t0;
  const fetched = flood.requests - before;
  const allowed = 1 + Math.floor(took / 30_000);
  assert.ok(fetched <= allowed, `${fetched} JWKS fetches during a ${took} ms flood (allowed ${allowed})`);
  assert.equal(await uidOver(asUser(flood.token('heidi', { alg: 'EdDSA' }), ROLE.flood)), 'heidi');
});

// ---------------------------------------------------------------------------
// Metrics and session expiry
// ---------------------------------------------------------------------------

test('/metrics: gateway_jwt_validations_total by outcome, gateway_jwks_fetches_total, gateway_jwks_cache_total', { timeout: 30_000 }, async () => {
  const outcomes = (text) => {
    const map = new Map();
    for (const line of text.split('\n')) {
      const m = /^gateway_jwt_validations_total\{([^}]*)\}\s+(\S+)/.exec(line);
      if (!m) continue;
      const o = /outcome="([^"]*)"/.exec(m[1]);
      assert.ok(o, `a validation sample without an outcome label: ${line}`);
      map.set(o[1], (map.get(o[1]) ?? 0) + Number(m[2]));
    }
    return map;
  };
  const before = outcomes(await scrapeMetrics());
  // three distinct tokens (a gateway may cache the result of validating one token)
  for (let i = 0; i < 3; i++) assert.equal(await uidOver(asUser(sets.main.token('ivan', { alg: 'EdDSA', claims: { jti: `m-${RUN}-${i}` } }))), 'ivan');
  const now = nowSeconds();
  for (let i = 0; i < 2; i++) await mustReject(sets.main.sign({ alg: 'EdDSA', payload: { sub: 'ivan', exp: now - 3600 - i } }), 'expired');
  const text = await scrapeMetrics();
  const afterMap = outcomes(text);
  const delta = [...afterMap].map(([k, v]) => [k, v - (before.get(k) ?? 0)]).filter(([, d]) => d > 0);
  const okLabel = delta.find(([, d]) => d >= 3);
  assert.ok(okLabel, `an outcome counted the 3 good validations: ${JSON.stringify(delta)}`);
  assert.ok(delta.some(([k, d]) => k !== okLabel[0] && d >= 2), `another outcome counted the 2 rejections: ${JSON.stringify(delta)}`);
  assert.ok(afterMap.size >= 2 && afterMap.size <= 20, `bounded outcome labels: ${[...afterMap.keys()]}`);
  for (const k of afterMap.keys()) assert.match(k, /^[a-z][a-z0-9_]*$/, `outcome label ${k}`);
  assert.ok(metricSum(text, 'gateway_jwks_fetches_total') >= Object.keys(rules).length - 2, 'JWKS fetches counted');
  assert.ok(metricSum(text, 'gateway_jwks_cache_total', { result: 'hit' }) > 0, 'cache hits counted');
  assert.ok(metricSum(text, 'gateway_jwks_cache_total', { result: 'miss' }) > 0, 'cache misses counted');
  assert.ok(!text.includes(sets.main.token('ivan', { alg: 'EdDSA' }).split('.')[1].slice(0, 20)), 'no token material in the metrics');
});

test('JWKS rotation: a new kid works after rotation (one refetch); the removed kid is refused', { timeout: 60_000 }, async () => {
  const rot = sets.rot;
  const oldToken = rot.token('frank', { alg: 'ES256' });
  assert.equal(await uidOver(asUser(oldToken, ROLE.rot)), 'frank');
  // an unknown kid may refetch at most once per 30 s per rule: start outside that window
  await quietSince(rot, 31_000);
  const before = rot.requests;
  const { oldKid, newKid } = rot.rotate('ES256');
  const newToken = rot.token('frank', { alg: 'ES256' });
  assert.equal(decode(newToken).header.kid, newKid);
  assert.equal(await uidOver(asUser(newToken, ROLE.rot)), 'frank', 'the new kid works right after rotation');
  const fetched = rot.requests - before;
  assert.equal(fetched, 1, `one refetch for the new kid (got ${fetched})`);
  // the refreshed set no longer has the old kid
  await mustReject(rot.token('frank', { alg: 'ES256', kid: oldKid }), 'the rotated-out kid', { role: ROLE.rot });
  // further requests with the new kid are served from the cache
  for (let i = 0; i < 5; i++) assert.equal(await uidOver(asUser(rot.token(`frank${i}`, { alg: 'ES256' }), ROLE.rot)), `frank${i}`);
  assert.ok(rot.requests - before <= 2, `no more fetches for a known kid (${rot.requests - before})`);
});

test('a WebSocket session is closed by the gateway once its token expires', { timeout: 30_000 }, async () => {
  const ttl = 4;
  const token = sets.main.token('judy', { alg: 'ES256', ttl });
  const exp = decode(token).payload.exp * 1000;
  const c = new Client({ connectionString: urlFor('authenticated', token) });
  let endedAt;
  let errored;
  c.on('end', () => (endedAt ??= Date.now()));
  c.on('error', (e) => {
    errored ??= e;
    endedAt ??= Date.now();
  });
  opened.push(c);
  await within(c.connect(), 10_000, 'WebSocket connect as judy');
  assert.equal((await c.query('SELECT auth.user_id() AS uid')).rows[0].uid, 'judy');
  // still open (and still judy) shortly before expiry
  while (Date.now() < exp - 1500) {
    const r = await c.query('SELECT auth.user_id() AS uid');
    assert.equal(r.rows[0].uid, 'judy');
    await sleep(500);
  }
  assert.equal(endedAt, undefined, 'not closed before the token expired');
  // closed within 15 s of the expiry; until then, never another user's id
  await waitFor(
    async () => {
      if (endedAt !== undefined) return true;
      const r = await c.query('SELECT auth.user_id() AS uid').then((x) => x.rows[0].uid, () => 'failed');
      if (r === 'failed') return true;
      assert.ok(ownOrNull(r, 'judy') || Date.now() < exp, `after expiry: ${r}`);
      await sleep(250);
      return false;
    },
    'the gateway to close the expired session',
    exp + 15_000 - Date.now(),
  );
  const closeAt = endedAt ?? Date.now();
  assert.ok(closeAt >= exp - 1000, `closed ${exp - closeAt} ms before the token expired`);
  if (errored) assert.doesNotMatch(errored.message ?? '', LEAKY_EXCEPT_EXPIRY, `closing message: ${errored.message}`);
  await captureError(() => c.query('SELECT 1'));
});
