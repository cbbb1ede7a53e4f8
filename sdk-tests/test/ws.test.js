// The real driver's WebSocket transport (Client and Pool) through the gateway's Postgres
// tunnel, compared with node-postgres talking straight to Postgres over TCP: results and
// errors field by field, interactive transactions, LISTEN/NOTIFY, cancellation, large
// results, authentication failures, how the endpoint is picked (address, Host, SNI,
// options, password hack), wss and https on the same port, poolQueryViaFetch, and the
// usage and metrics that sessions leave behind.
//
// Node 20 has no global WebSocket, and *.localtest.me need not resolve: the driver gets the
// `ws` package and a wsProxy that dials the gateway on 127.0.0.1, passing the connection
// string's host:port as `?address=` (which names the endpoint).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import ws from 'ws';
import { Client, Pool } from '@neondatabase/serverless';
import {
  neon,
  neonConfig,
  pg,
  requireEnv,
  DATABASE_URL,
  DIRECT_DATABASE_URL,
  SQL_ENDPOINT,
  GATEWAY_HOST,
  GATEWAY_PORT,
  pgClient,
  uniqueName,
  variantUrl,
  assertSameValues,
  assertSameQuery,
  assertSameQueryError,
  TYPES_QUERY,
  fieldSummary,
  errorSummary,
  captureError,
  waitFor,
  startSleep,
  metric,
  scrapeMetrics,
  metricSum,
  endpointUsage,
  usage,
} from './helpers.js';

// wss trusts the gateway's certificate through NODE_EXTRA_CA_CERTS (the test CA).
requireEnv('GATEWAY_TLS_CA');
requireEnv('NODE_EXTRA_CA_CERTS');

const MiB = 1024 * 1024;
const AUTH_FAILED = "password authentication failed for user 'postgres'";

/** The wsProxy from the README: the connection string's host:port travels as ?address=. */
const viaAddress = (host, port) => `127.0.0.1:${GATEWAY_PORT}/v2?address=${host}:${port}`;
/** No address: the endpoint comes from Host / SNI / options / password, else the default. */
const pathOnly = () => `127.0.0.1:${GATEWAY_PORT}/v1`;

neonConfig.useSecureWebSocket = false;
neonConfig.wsProxy = viaAddress;

const T_ITEMS = uniqueName('ws_items');
const T_UNIQ = uniqueName('ws_uniq');
const T_TX = uniqueName('ws_tx');
const CHANNEL = uniqueName('ws_chan');

let direct; // node-postgres, straight to Postgres
const opened = []; // every driver client, ended in after()
const clientErrors = new Map(); // client -> 'error' events it emitted

before(async () => {
  direct = await pgClient();
  await direct.query(`CREATE TABLE ${T_ITEMS} (id serial PRIMARY KEY, name text NOT NULL, qty int CHECK (qty > 0), price numeric(10,2), tags text[], meta jsonb, at timestamptz)`);
  await direct.query(`CREATE TABLE ${T_UNIQ} (id int PRIMARY KEY, email text CONSTRAINT ${T_UNIQ}_email_key UNIQUE)`);
  await direct.query(`INSERT INTO ${T_UNIQ} VALUES (1, 'taken@example.com')`);
  await direct.query(`CREATE TABLE ${T_TX} (id int PRIMARY KEY, v text)`);
});

after(async () => {
  // Clients a failed test left open. (end() on an ended client never resolves, so skip those.)
  for (const c of opened) if (!c._ending) await c.end().catch(() => {});
  if (direct) {
    await direct
      .query(`DROP TABLE IF EXISTS ${T_ITEMS}, ${T_UNIQ}, ${T_TX}`)
      .catch((e) => console.error('cleanup:', e.message));
    await direct.end();
  }
});

/** A driver Client over the WebSocket tunnel; `error` events are recorded, not thrown. */
function wsClient({ url = DATABASE_URL, pipeline = true, config = {}, wsProxy, secure, webSocketConstructor } = {}) {
  const c = new Client({ connectionString: url, ...config });
  if (!pipeline) c.neonConfig.pipelineConnect = false;
  if (wsProxy) c.neonConfig.wsProxy = wsProxy;
  if (secure !== undefined) c.neonConfig.useSecureWebSocket = secure;
  if (webSocketConstructor) c.neonConfig.webSocketConstructor = webSocketConstructor;
  const errors = [];
  clientErrors.set(c, errors);
  c.on('error', (e) => errors.push(e));
  return c;
}

/** wsClient, connected (and ended in after() if a test fails before it ends it). */
async function connected(opts) {
  const c = wsClient(opts);
  opened.push(c);
  await c.connect();
  return c;
}

/** Connect and run one query, which must fail; the error (from connect or the query). */
async function failedSession(opts) {
  const c = wsClient(opts);
  try {
    return await captureError(async () => {
      await c.connect();
      await c.query('SELECT 1');
    });
  } catch (unexpectedSuccess) {
    await c.end().catch(() => {});
    throw unexpectedSuccess;
  }
}

/** The `ws` package with extra options for every socket (Host header, TLS servername). */
function wsWith(options) {
  return class extends ws {
    constructor(url, protocols) {
      super(url, protocols, options);
    }
  };
}

const MODES = [
  { name: 'default (pipelineConnect: password)', pipeline: true },
  { name: 'pipelineConnect: false', pipeline: false },
];

/** Run `text` through the gateway on `c` and directly; compare everything. */
const compare = (c, text, values, label) => assertSameQuery(c, direct, text, values, label);
/** Both must fail alike; `c` must stay usable. */
const compareError = (c, text, values, label) => assertSameQueryError(c, direct, text, values, label);

// ---------------------------------------------------------------------------
// Client over ws, both connect modes
// ---------------------------------------------------------------------------

for (const mode of MODES) {
  test(`Client ${mode.name}: connect, query with parameters, session state`, async () => {
    const c = await connected({ pipeline: mode.pipeline });
    assert.equal(c.neonConfig.pipelineConnect, mode.pipeline ? 'password' : false);
    const r = await c.query('SELECT $1::int AS n, $2::text AS s, current_user AS who, current_database() AS db', [42, 'x']);
    assert.deepStrictEqual(r.rows, [{ n: 42, s: 'x', who: 'postgres', db: 'main' }]);
    // session state lives as long as the socket (one backend connection per session)
    await c.query(`SET application_name = 'ws-test'`);
    const pid1 = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    // the cancel key is the gateway's own, not the backend's
    assert.ok(Number.isInteger(c.processID), `processID: ${c.processID}`);
    assert.ok(Number.isInteger(c.secretKey), `secretKey: ${c.secretKey}`);
    assert.notEqual(c.processID, pid1);
    const again = await c.query(`SELECT current_setting('application_name') AS app, pg_backend_pid() AS pid`);
    assert.deepStrictEqual(again.rows, [{ app: 'ws-test', pid: pid1 }]);
    const serverVersion = (await direct.query('SHOW server_version')).rows[0].server_version;
    assert.equal((await c.query('SHOW server_version')).rows[0].server_version, serverVersion);
    await c.end();
    assert.deepStrictEqual(clientErrors.get(c), []);
  });

  test(`Client ${mode.name}: many types equal node-postgres field by field`, async () => {
    const c = await connected({ pipeline: mode.pipeline });
    await compare(c, TYPES_QUERY, undefined, 'types, simple protocol');
    await compare(c, TYPES_QUERY + ' WHERE $1::int = 1', [1], 'types, extended protocol');
    await compare(
      c,
      'SELECT $1::text AS t, $2::int8 AS i8, $3::jsonb AS j, $4::bytea AS b, $5::text[] AS arr, $6::timestamptz AS ts, $7::numeric AS n, $8::bool AS nb',
      ['é 🐘 \'"\\', '9007199254740993', { a: [1, null] }, Buffer.from([0, 255, 1]), ['x', null, 'y z'], new Date('2024-05-06T07:08:09.123Z'), '1.50', null],
      'parameters of many types',
    );
    await compare(c, 'SELECT 1 AS a; SELECT 2 AS b, 3 AS c; SELECT', undefined, 'several statements in one simple query');
    await c.end();
  });

  test(`Client ${mode.name}: DML command tags, rowCount, RETURNING, table and column ids`, async () => {
    const c = await connected({ pipeline: mode.pipeline });
    const tag = mode.pipeline ? 'p' : 'n';
    // each statement runs once through the gateway and once directly, so every row is doubled
    const { g: w } = await compare(
      c,
      `INSERT INTO ${T_ITEMS} (name, qty, price, tags, meta, at) VALUES ($1, 1, 9.99, '{a,b}', '{"k":1}', '2024-01-01T00:00:00Z'), ($2, 2, NULL, '{}', NULL, NULL) RETURNING name, qty, price, tags, meta, at`,
      [`${tag}-widget`, `${tag}-gadget`],
      'INSERT RETURNING',
    );
    assert.equal(w.command, 'INSERT');
    assert.equal(w.rowCount, 2);
    await compare(c, `SELECT * FROM ${T_ITEMS} WHERE name LIKE $1 ORDER BY id`, [`${tag}-%`], 'SELECT with table ids');
    const sel = await c.query(`SELECT id, name FROM ${T_ITEMS} LIMIT 1`);
    assert.ok(sel.fields[0].tableID > 0 && sel.fields[0].columnID === 1, 'tableID/columnID come from Postgres');
    await compare(c, `UPDATE ${T_ITEMS} SET qty = qty + 1 WHERE name = $1`, [`${tag}-widget`], 'UPDATE');
    const del = `DELETE FROM ${T_ITEMS} WHERE id = (SELECT min(id) FROM ${T_ITEMS} WHERE name = $1) RETURNING name, qty`;
    await compare(c, del, [`${tag}-gadget`], 'DELETE RETURNING');
    await compare(c, `SELECT count(*)::int AS n FROM ${T_ITEMS} WHERE name = $1`, [`${tag}-gadget`], 'after DELETE');
    await c.end();
  });

  test(`Client ${mode.name}: errors equal node-postgres field by field`, async () => {
    const c = await connected({ pipeline: mode.pipeline });
    const syntax = await compareError(c, 'SELEC 1', undefined, 'syntax error');
    assert.equal(syntax.code, '42601');
    assert.ok(syntax.position, 'syntax error has a position');
    const uniq = await compareError(c, `INSERT INTO ${T_UNIQ} VALUES (2, $1)`, ['taken@example.com'], 'unique violation');
    assert.equal(uniq.code, '23505');
    assert.equal(uniq.constraint, `${T_UNIQ}_email_key`);
    assert.equal(uniq.table, T_UNIQ);
    assert.equal(uniq.schema, 'public');
    assert.match(uniq.detail, /taken@example\.com/);
    assert.equal((await compareError(c, 'SELECT 1/0', undefined, 'division by zero')).code, '22012');
    const col = await compareError(c, `SELECT nosuchcol FROM ${T_UNIQ}`, undefined, 'unknown column');
    assert.equal(col.code, '42703');
    await compareError(c, 'SELECT * FROM sdkt_no_such_table', undefined, 'unknown table');
    const fn = await compareError(c, 'SELECT sdkt_no_such_fn(1)', undefined, 'unknown function');
    assert.ok(fn.hint, 'unknown function has a hint');
    await compareError(c, 'SELECT $1::int', ['abc'], 'invalid input in a parameter');
    await compareError(c, `INSERT INTO ${T_ITEMS} (id, name, qty) VALUES (-1, NULL, 1)`, undefined, 'not-null violation');
    await compareError(c, `INSERT INTO ${T_ITEMS} (id, name, qty) VALUES (-2, 'x', 0)`, undefined, 'check violation');
    const raised = await compareError(
      c,
      `DO $$ BEGIN RAISE EXCEPTION 'value % is too big', 7 USING DETAIL = 'some detail', HINT = 'some hint', ERRCODE = '22023'; END $$`,
      undefined,
      'RAISE with detail, hint, where',
    );
    assert.equal(raised.hint, 'some hint');
    assert.ok(raised.where, 'RAISE has a where');
    await c.end();
  });
}

test('NOTICE messages reach the driver like node-postgres', async () => {
  const c = await connected();
  const collect = (client) => {
    const notices = [];
    client.on('notice', (n) => notices.push(n));
    return notices;
  };
  const wsNotices = collect(c);
  const pgNotices = collect(direct);
  const text = `DO $$ BEGIN RAISE NOTICE 'hello %', 42 USING DETAIL = 'd'; RAISE WARNING 'careful'; END $$`;
  await c.query(text);
  await direct.query(text);
  direct.removeAllListeners('notice');
  assert.equal(wsNotices.length, 2);
  assert.deepStrictEqual(wsNotices.map(errorSummary), pgNotices.map(errorSummary));
  await c.end();
});

// ---------------------------------------------------------------------------
// Interactive transactions
// ---------------------------------------------------------------------------

async function directCount(where) {
  return (await direct.query(`SELECT count(*)::int AS n FROM ${T_TX} WHERE ${where}`)).rows[0].n;
}

test('interactive transaction: writes are visible to others only after COMMIT', async () => {
  const c = await connected();
  await c.query('BEGIN');
  await c.query(`INSERT INTO ${T_TX} VALUES (1, 'committed')`);
  assert.equal((await c.query(`SELECT count(*)::int AS n FROM ${T_TX} WHERE id = 1`)).rows[0].n, 1);
  assert.equal(await directCount('id = 1'), 0, 'not visible before COMMIT');
  const xid1 = (await c.query('SELECT txid_current() AS x')).rows[0].x;
  const xid2 = (await c.query('SELECT txid_current() AS x')).rows[0].x;
  assert.equal(xid1, xid2, 'the statements share one transaction');
  await c.query('COMMIT');
  assert.equal(await directCount('id = 1'), 1, 'visible after COMMIT');
  await c.end();
});

test('interactive transaction: ROLLBACK, savepoints, and an aborted transaction (25P02)', async () => {
  const c = await connected({ pipeline: false });
  await c.query('BEGIN');
  await c.query(`INSERT INTO ${T_TX} VALUES (10, 'a')`);
  await c.query('SAVEPOINT s1');
  await c.query(`INSERT INTO ${T_TX} VALUES (11, 'b')`);
  await c.query('ROLLBACK TO SAVEPOINT s1');
  await c.query(`INSERT INTO ${T_TX} VALUES (12, 'c')`);
  await c.query('RELEASE SAVEPOINT s1');
  await c.query('COMMIT');
  assert.deepStrictEqual(
    (await direct.query(`SELECT id FROM ${T_TX} WHERE id BETWEEN 10 AND 19 ORDER BY id`)).rows,
    [{ id: 10 }, { id: 12 }],
  );

  await c.query('BEGIN');
  await c.query(`INSERT INTO ${T_TX} VALUES (20, 'rolled back')`);
  await c.query('ROLLBACK');
  assert.equal(await directCount('id = 20'), 0);

  // an error aborts the transaction until ROLLBACK, exactly as on a direct connection
  for (const client of [c, direct]) {
    await client.query('BEGIN');
    await captureError(() => client.query('SELECT 1/0'));
  }
  const wsErr = await captureError(() => c.query('SELECT 1'));
  const pgErr = await captureError(() => direct.query('SELECT 1'));
  assert.equal(wsErr.code, '25P02');
  assert.deepStrictEqual(errorSummary(wsErr), errorSummary(pgErr));
  for (const client of [c, direct]) await client.query('ROLLBACK');
  assert.deepStrictEqual((await c.query('SELECT 1 AS ok')).rows, [{ ok: 1 }]);
  await c.end();
});

// ---------------------------------------------------------------------------
// LISTEN / NOTIFY
// ---------------------------------------------------------------------------

test('LISTEN/NOTIFY: notifications cross the tunnel in both directions', async () => {
  const c = await connected();
  await c.query(`LISTEN ${CHANNEL}`);
  // to the driver while its session is idle (no query of its own running)
  const toWs = new Promise((resolve) => c.once('notification', resolve));
  await direct.query('SELECT pg_notify($1, $2)', [CHANNEL, 'héllo 🐘 from tcp']);
  const n1 = await toWs;
  assert.equal(n1.channel, CHANNEL);
  assert.equal(n1.payload, 'héllo 🐘 from tcp');
  assert.equal(n1.processId, direct.processID, 'the notifying backend is the direct connection');

  // the other way: a NOTIFY sent through the tunnel
  await direct.query(`LISTEN ${CHANNEL}`);
  const toDirect = new Promise((resolve) => direct.once('notification', resolve));
  const wsPid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
  await c.query(`NOTIFY ${CHANNEL}, 'from ws'`);
  const n2 = await toDirect;
  await direct.query(`UNLISTEN ${CHANNEL}`);
  assert.equal(n2.payload, 'from ws');
  assert.equal(n2.processId, wsPid);

  // a notification for the listener itself (it listens on the channel too)
  const own = new Promise((resolve) => c.once('notification', resolve));
  await c.query(`SELECT pg_notify('${CHANNEL}', 'to myself')`);
  assert.equal((await own).payload, 'to myself');
  await c.end();
});

// ---------------------------------------------------------------------------
// Cancellation and timeouts
// ---------------------------------------------------------------------------


test('cancel: the driver Client.cancel sends a CancelRequest over a new WebSocket', async () => {
  const c = await connected();
  const before = await metric('gateway_cancel_requests_total', { outcome: 'forwarded' });
  const { outcome, active } = await startSleep(c, direct, 'ws-cancel');
  new Client(DATABASE_URL).cancel(c, active);
  const err = await outcome;
  assert.equal(err.code, '57014');
  assert.equal(err.message, 'canceling statement due to user request');
  assert.ok((await metric('gateway_cancel_requests_total', { outcome: 'forwarded' })) >= before + 1);
  assert.deepStrictEqual((await c.query('SELECT 2 AS after_cancel')).rows, [{ after_cancel: 2 }]);
  await c.end();
});

test('cancel: node-postgres cancels a WebSocket session over plain TCP with the same key', async () => {
  const c = await connected({ pipeline: false });
  const { outcome, active } = await startSleep(c, direct, 'tcp-cancel');
  // pg's Client.prototype.cancel opens a TCP connection to host:port and sends c's key
  new pg.Client({ host: GATEWAY_HOST, port: GATEWAY_PORT }).cancel(c, active);
  const err = await outcome;
  assert.equal(err.code, '57014');
  assert.deepStrictEqual((await c.query('SELECT 3 AS after_cancel')).rows, [{ after_cancel: 3 }]);
  await c.end();
});

test('statement_timeout from the connection config: 57014, as node-postgres gets it', async () => {
  const c = await connected({ config: { statement_timeout: 100 } });
  const timed = new pg.Client({ connectionString: DIRECT_DATABASE_URL, statement_timeout: 100 });
  await timed.connect();
  try {
    assert.equal((await c.query('SHOW statement_timeout')).rows[0].statement_timeout, '100ms');
    const wsErr = await captureError(() => c.query('SELECT pg_sleep(10)'));
    const pgErr = await captureError(() => timed.query('SELECT pg_sleep(10)'));
    assert.equal(wsErr.code, '57014');
    assert.equal(wsErr.message, 'canceling statement due to statement timeout');
    assert.deepStrictEqual(errorSummary(wsErr), errorSummary(pgErr));
    // SET works too, and the session goes on
    await c.query('SET statement_timeout = 0');
    assert.deepStrictEqual((await c.query('SELECT pg_sleep(0.2), 1 AS ok')).rows, [{ pg_sleep: '', ok: 1 }]);
  } finally {
    await timed.end();
  }
  await c.end();
});

// ---------------------------------------------------------------------------
// Large messages
// ---------------------------------------------------------------------------

const md5 = (s) => createHash('md5').update(s).digest('hex');

test('a 10 MB result and a 10 MB parameter cross the tunnel intact', async () => {
  const c = await connected();
  const n = 10 * MiB;
  const one = await c.query(`SELECT repeat('x', ${n}) || 'end' AS big`);
  assert.equal(one.rows[0].big.length, n + 3);
  assert.ok(one.rows[0].big.endsWith('xend'));

  // about 10 MB in many rows, compared with node-postgres by digest
  const text = `SELECT g, md5(g::text) AS h, repeat(chr(65 + g % 26), 100) AS pad FROM generate_series(1, 60000) g`;
  const w = await c.query(text);
  const p = await direct.query(text);
  assert.equal(w.rowCount, 60000);
  assert.equal(md5(JSON.stringify(w.rows)), md5(JSON.stringify(p.rows)));
  assert.ok(JSON.stringify(w.rows).length > 9 * MiB);

  const upload = 'é'.repeat(5 * MiB) + 'tail'; // 10 MB of UTF-8
  const r = await c.query('SELECT octet_length($1::text) AS len, md5($1::text) AS sum', [upload]);
  assert.deepStrictEqual(r.rows, [{ len: Buffer.byteLength(upload), sum: md5(upload) }]);
  await c.end();
});

// ---------------------------------------------------------------------------
// Authentication and endpoints
// ---------------------------------------------------------------------------

for (const mode of MODES) {
  test(`auth ${mode.name}: wrong password, unknown endpoint and unknown role fail alike`, async () => {
    const wrong = await failedSession({ pipeline: mode.pipeline, url: variantUrl({ password: 'not-the-password' }) });
    const noEndpoint = await failedSession({ pipeline: mode.pipeline, url: variantUrl({ hostname: 'sdktnosuch.localtest.me' }) });
    for (const [label, err] of [
      ['wrong password', wrong],
      ['unknown endpoint', noEndpoint],
    ]) {
      assert.equal(err.code, '28P01', `${label}: ${err.message}`);
      assert.equal(err.message, AUTH_FAILED, label);
      assert.equal(err.severity, 'FATAL', label);
    }
    assert.deepStrictEqual(errorSummary(noEndpoint), errorSummary(wrong));
    const noRole = await failedSession({ pipeline: mode.pipeline, url: variantUrl({ username: 'sdkt_no_such_role' }) });
    assert.equal(noRole.code, '28P01');
    assert.equal(noRole.message, "password authentication failed for user 'sdkt_no_such_role'");
  });
}

test('without ?address=, an IP in the Host header names no endpoint: the default endpoint serves', async () => {
  const before = await endpointUsage('db');
  const c = await connected({ wsProxy: pathOnly });
  assert.equal((await c.query(`SELECT 'default' AS e, repeat('d', 5000) AS pad`)).rows[0].e, 'default');
  await c.end();
  const afterUsage = await waitFor(async () => {
    const u = await endpointUsage('db');
    return u.egress_bytes >= before.egress_bytes + 5000 ? u : null;
  }, 'usage of endpoint db to count the session');
  assert.ok(afterUsage.ingress_bytes > before.ingress_bytes);
});

test('the Host header and the TLS server name pick the endpoint when there is no ?address=', async () => {
  const host = (name) => wsWith({ headers: { host: `${name}:${GATEWAY_PORT}` } });
  const ok = await connected({ wsProxy: pathOnly, webSocketConstructor: host('db.localtest.me') });
  assert.deepStrictEqual((await ok.query('SELECT 1 AS via_host')).rows, [{ via_host: 1 }]);
  await ok.end();
  const bad = await failedSession({ wsProxy: pathOnly, webSocketConstructor: host('sdktnosuch.localtest.me') });
  assert.equal(bad.code, '28P01');
  assert.equal(bad.message, AUTH_FAILED);

  // wss: Host is 127.0.0.1 (no endpoint), so SNI decides
  const sni = (name) => wsWith({ servername: name });
  const viaSni = await connected({ wsProxy: pathOnly, secure: true, webSocketConstructor: sni('db.localtest.me') });
  assert.deepStrictEqual((await viaSni.query('SELECT 1 AS via_sni')).rows, [{ via_sni: 1 }]);
  await viaSni.end();
  const badSni = await failedSession({ wsProxy: pathOnly, secure: true, webSocketConstructor: sni('sdktnosuch.localtest.me') });
  assert.equal(badSni.code, '28P01');
  assert.equal(badSni.message, AUTH_FAILED);
});

test('password hack and options=endpoint name the endpoint', async () => {
  const hack = await connected({ wsProxy: pathOnly, url: variantUrl({ password: 'endpoint=db;postgres' }) });
  assert.deepStrictEqual((await hack.query('SELECT 1 AS hacked')).rows, [{ hacked: 1 }]);
  await hack.end();
  const badHack = await failedSession({ wsProxy: pathOnly, url: variantUrl({ password: 'endpoint=sdktnosuch;postgres' }) });
  assert.equal(badHack.code, '28P01');
  assert.equal(badHack.message, AUTH_FAILED);

  // endpoint= is taken out; the rest of options reaches Postgres as it would directly
  const search = '-c search_path=sdkt_custom,public';
  const opt = await connected({ wsProxy: pathOnly, config: { options: `endpoint=db ${search}` } });
  const viaOptions = (await opt.query('SHOW search_path')).rows[0].search_path;
  await opt.end();
  const plain = new pg.Client({ connectionString: DIRECT_DATABASE_URL, options: search });
  await plain.connect();
  const expected = (await plain.query('SHOW search_path')).rows[0].search_path;
  await plain.end();
  assert.equal(viaOptions, expected);
  assert.match(viaOptions, /sdkt_custom/);
  const badOpt = await failedSession({ wsProxy: pathOnly, config: { options: 'endpoint=sdktnosuch' } });
  assert.equal(badOpt.code, '28P01');
  assert.equal(badOpt.message, AUTH_FAILED);
  // the address names db, the options another endpoint: refused
  const clash = await failedSession({ config: { options: 'endpoint=sdktother' } });
  assert.equal(clash.code, '28000');
  assert.match(clash.message, /inconsistent/i);
});

// ---------------------------------------------------------------------------
// TLS on the shared port: wss, and https for neon()
// ---------------------------------------------------------------------------

test('wss (useSecureWebSocket: true) with the test CA trusted', async () => {
  const beforeOk = await metric('gateway_sessions_total', { transport: 'wss', outcome: 'ok' });
  for (const mode of MODES) {
    const c = await connected({ secure: true, pipeline: mode.pipeline });
    await compare(c, TYPES_QUERY, undefined, `types over wss, ${mode.name}`);
    assert.ok((await metric('gateway_sessions_active', { transport: 'wss' })) >= 1, 'a wss session is active');
    const big = await c.query(`SELECT repeat('s', ${2 * MiB}) AS big`);
    assert.equal(big.rows[0].big.length, 2 * MiB);
    await c.end();
  }
  await waitFor(
    async () => (await metric('gateway_sessions_total', { transport: 'wss', outcome: 'ok' })) >= beforeOk + 2,
    'two wss sessions counted as ok',
  );
});

test('https: neon() over TLS on the same port, next to plain http', async () => {
  const sqlTls = neon(DATABASE_URL, { fullResults: true });
  neonConfig.fetchEndpoint = () => `https://127.0.0.1:${GATEWAY_PORT}/sql`;
  try {
    const r = await sqlTls.query('SELECT $1::text AS s, $2::int AS n', ['over https', 5]);
    assert.deepStrictEqual(r.rows, [{ s: 'over https', n: 5 }]);
    const err = await captureError(() => sqlTls.query('SELECT 1/0'));
    assert.equal(err.code, '22012');
  } finally {
    neonConfig.fetchEndpoint = () => SQL_ENDPOINT;
  }
  // plain http still answers on the same port
  assert.deepStrictEqual(await neon(DATABASE_URL)`SELECT 'plain' AS s`, [{ s: 'plain' }]);
});

// ---------------------------------------------------------------------------
// Pool
// ---------------------------------------------------------------------------

async function exercisePool(pool, { id, pipelineConnect }) {
  const errors = [];
  pool.on('error', (e) => errors.push(e));
  const results = await Promise.all(
    Array.from({ length: 24 }, (_, i) => pool.query('SELECT $1::int AS i, pg_backend_pid() AS pid', [i])),
  );
  assert.deepStrictEqual(
    results.map((r) => r.rows[0].i),
    Array.from({ length: 24 }, (_, i) => i),
  );
  const pids = new Set(results.map((r) => r.rows[0].pid));
  assert.ok(pids.size >= 1 && pids.size <= 3, `${pids.size} backends for a pool of max 3`);
  assert.ok(pool.totalCount >= 1, 'the pool opened WebSocket clients');

  // an interactive transaction on one pooled client
  const client = await pool.connect();
  try {
    assert.equal(client.neonConfig.pipelineConnect, pipelineConnect);
    await client.query('BEGIN');
    await client.query(`INSERT INTO ${T_TX} VALUES ($1, 'pool')`, [id]);
    assert.equal(await directCount(`id = ${id}`), 0);
    await client.query('COMMIT');
  } finally {
    client.release();
  }
  assert.equal(await directCount(`id = ${id}`), 1);
  const err = await captureError(() => pool.query('SELECT 1/0'));
  assert.equal(err.code, '22012');
  await pool.end();
  assert.deepStrictEqual(errors, []);
}

test('Pool over ws (default settings): concurrent queries, a transaction on a checked-out client', async () => {
  await exercisePool(new Pool({ connectionString: DATABASE_URL, max: 3 }), { id: 100, pipelineConnect: 'password' });
});

test('Pool over ws with pipelineConnect: false', async () => {
  const previous = neonConfig.pipelineConnect;
  neonConfig.pipelineConnect = false;
  try {
    const pool = new Pool({ connectionString: DATABASE_URL, max: 3 });
    await exercisePool(pool, { id: 101, pipelineConnect: false });
  } finally {
    neonConfig.pipelineConnect = previous;
  }
});

test('poolQueryViaFetch: Pool.query goes over HTTP, not WebSocket', async () => {
  const text = `SELECT $1::int AS n, 'x'::text AS s, '2024-01-01'::date AS d`;
  neonConfig.poolQueryViaFetch = true;
  try {
    const pool = new Pool({ connectionString: DATABASE_URL });
    const before = await metric('gateway_http_requests_total');
    const r = await pool.query(text, [7]);
    const r2 = await pool.query({ text: 'SELECT $1::text AS t', values: ['y'] });
    assert.equal(pool.totalCount, 0, 'no WebSocket client was opened');
    const after = await metric('gateway_http_requests_total');
    assert.ok(after >= before + 2, `gateway_http_requests_total went from ${before} to ${after}`);
    const p = await direct.query(text, [7]);
    assert.equal(r.command, p.command);
    assert.equal(r.rowCount, p.rowCount);
    assert.deepStrictEqual(fieldSummary(r.fields), fieldSummary(p.fields));
    assertSameValues(r.rows, p.rows);
    assert.deepStrictEqual(r2.rows, [{ t: 'y' }]);
    const err = await captureError(() => pool.query('SELECT 1/0'));
    assert.equal(err.code, '22012');
    await pool.end();
  } finally {
    neonConfig.poolQueryViaFetch = false;
  }
});

// ---------------------------------------------------------------------------
// Usage and metrics
// ---------------------------------------------------------------------------

test('sessions move /usage and the session metrics', async () => {
  const text0 = await scrapeMetrics();
  const u0 = await endpointUsage('db');
  const okBefore = metricSum(text0, 'gateway_sessions_total', { transport: 'ws', outcome: 'ok' });
  const inBefore = metricSum(text0, 'gateway_session_bytes_total', { direction: 'ingress' });
  const outBefore = metricSum(text0, 'gateway_session_bytes_total', { direction: 'egress' });

  const c = await connected();
  const payload = 'u'.repeat(200_000);
  await c.query('SELECT length($1::text) AS n', [payload]); // >= 200 kB in
  // (only now: with pipelineConnect, connect() resolves before the gateway has the session)
  assert.ok((await metric('gateway_sessions_active', { transport: 'ws' })) >= 1, 'the session is active');
  await c.query(`SELECT repeat('v', 300000) AS big`); // >= 300 kB out
  await c.end();

  await waitFor(
    async () => (await metric('gateway_sessions_total', { transport: 'ws', outcome: 'ok' })) >= okBefore + 1,
    'the ws session counted as ok',
  );
  const text1 = await scrapeMetrics();
  assert.ok(metricSum(text1, 'gateway_session_bytes_total', { direction: 'ingress' }) >= inBefore + 200_000);
  assert.ok(metricSum(text1, 'gateway_session_bytes_total', { direction: 'egress' }) >= outBefore + 300_000);
  const u1 = await endpointUsage('db');
  assert.ok(u1.ingress_bytes >= u0.ingress_bytes + 200_000, `ingress ${u0.ingress_bytes} -> ${u1.ingress_bytes}`);
  assert.ok(u1.egress_bytes >= u0.egress_bytes + 300_000, `egress ${u0.egress_bytes} -> ${u1.egress_bytes}`);
  // endpoints that do not exist are never counted
  const all = await usage();
  assert.ok(!Object.keys(all.endpoints).some((e) => e.startsWith('sdkt')), JSON.stringify(all));
});
