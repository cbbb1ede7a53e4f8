// Raw HTTP behaviour of the gateway's /sql endpoint: limits, CORS, request ids,
// malformed input, typed (non-raw) output and cancellation on client disconnect.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import {
  GATEWAY_HTTP,
  DATABASE_URL,
  httpSql,
  pgClient,
  uniqueName,
  captureError,
  sleep,
  waitFor,
  NeonDbError,
} from './helpers.js';

const MiB = 1024 * 1024;
const DRIVER_HEADERS = {
  'Neon-Connection-String': DATABASE_URL,
  'Neon-Raw-Text-Output': 'true',
  'Neon-Array-Mode': 'true',
};

let client;
const T_CANCEL = uniqueName('cancel');
const requestIds = [];

before(async () => {
  client = await pgClient();
  await client.query(`CREATE TABLE ${T_CANCEL} (id int)`);
});

after(async () => {
  if (client) {
    await client.query(`DROP TABLE IF EXISTS ${T_CANCEL}`).catch((e) => console.error('cleanup:', e.message));
    await client.end();
  }
});

/** fetch() to the gateway, recording the neon-request-id of every response. */
async function gw(path, init = {}) {
  const res = await fetch(GATEWAY_HTTP + path, init);
  const id = res.headers.get('neon-request-id');
  assert.ok(id && id.trim().length > 0, `response to ${init.method ?? 'GET'} ${path} (${res.status}) lacks neon-request-id`);
  requestIds.push(id);
  return res;
}

function postSql(body, headers = DRIVER_HEADERS) {
  return gw('/sql', { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body) });
}

/**
 * A raw HTTP/1.1 POST over a TCP socket that keeps reading while it uploads.
 * The gateway may answer 413 and close before the upload has finished; HTTP
 * client libraries then often report EPIPE and drop the response, so this
 * reads the response bytes directly and stops uploading once they arrive.
 * `chunks` is an array of strings/Buffers; `chunked` selects
 * Transfer-Encoding: chunked instead of Content-Length.
 */
function rawPost(path, headers, chunks, { chunked = false, pauseMs = 500, pauseAfterBytes = 10 * MiB } = {}) {
  return new Promise((resolve, reject) => {
    const url = new URL(GATEWAY_HTTP + path);
    const socket = net.connect({ host: url.hostname, port: Number(url.port) });
    const received = [];
    let writeError = null;
    socket.on('data', (d) => received.push(d));
    socket.on('error', (e) => {
      writeError = e;
    });
    socket.on('close', () => {
      const raw = Buffer.concat(received);
      const headerEnd = raw.indexOf('\r\n\r\n');
      if (headerEnd < 0) {
        reject(new Error(`no HTTP response from the gateway (${writeError?.code ?? 'connection closed'}); got ${raw.length} bytes`));
        return;
      }
      const head = raw.subarray(0, headerEnd).toString('latin1').split('\r\n');
      const status = Number(head[0].split(' ')[1]);
      const resHeaders = {};
      for (const line of head.slice(1)) {
        const i = line.indexOf(':');
        resHeaders[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
      }
      let body = raw.subarray(headerEnd + 4);
      if (/chunked/i.test(resHeaders['transfer-encoding'] ?? '')) {
        const parts = [];
        let pos = 0;
        while (pos < body.length) {
          const eol = body.indexOf('\r\n', pos);
          if (eol < 0) break;
          const size = parseInt(body.subarray(pos, eol).toString('latin1'), 16);
          if (!size) break;
          parts.push(body.subarray(eol + 2, eol + 2 + size));
          pos = eol + 2 + size + 2;
        }
        body = Buffer.concat(parts);
      } else if (resHeaders['content-length'] !== undefined) {
        body = body.subarray(0, Number(resHeaders['content-length']));
      }
      resolve({ status, headers: resHeaders, body: body.toString('utf8') });
    });
    socket.on('connect', async () => {
      const total = chunks.reduce((n, c) => n + Buffer.byteLength(c), 0);
      const lines = [`POST ${url.pathname} HTTP/1.1`, `Host: ${url.host}`, 'Connection: close'];
      for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
      lines.push(chunked ? 'Transfer-Encoding: chunked' : `Content-Length: ${total}`);
      socket.write(lines.join('\r\n') + '\r\n\r\n');
      const drained = () =>
        new Promise((r) => {
          const done = () => {
            socket.off('drain', done);
            socket.off('close', done);
            r();
          };
          socket.on('drain', done);
          socket.on('close', done);
        });
      // Give the gateway a chance to answer before (more of) the body is
      // sent: right after the headers (Content-Length check) and once more
      // than the limit has been sent (streamed check). Writing into a socket
      // the server has closed makes the kernel drop the unread response.
      const answered = async (ms) => {
        const until = Date.now() + ms;
        while (Date.now() < until && received.length === 0 && !socket.destroyed) await sleep(20);
        return received.length > 0 || socket.destroyed || writeError !== null;
      };
      if (await answered(pauseMs)) return;
      let sent = 0;
      let paused = false;
      for (const c of chunks) {
        const payload = chunked ? [Buffer.byteLength(c).toString(16) + '\r\n', c, '\r\n'] : [c];
        let ok = true;
        for (const part of payload) ok = socket.write(part) && ok;
        if (!ok) await drained();
        sent += Buffer.byteLength(c);
        if (!paused && sent > pauseAfterBytes) {
          paused = true;
          if (await answered(pauseMs * 5)) return;
        }
        if (received.length > 0 || socket.destroyed || writeError) return; // answered early
      }
      if (chunked && !socket.destroyed && !writeError) socket.write('0\r\n\r\n');
    });
  });
}

function bigBodyChunks() {
  const chunks = ['{"query":"SELECT length($1) AS n","params":["'];
  for (let i = 0; i < 11; i++) chunks.push('x'.repeat(MiB));
  chunks.push('"]}');
  return chunks;
}

test('request body over 10 MiB -> 413 (Content-Length)', async () => {
  const res = await rawPost('/sql', DRIVER_HEADERS, bigBodyChunks());
  assert.equal(res.status, 413, `body: ${res.body.slice(0, 300)}`);
  assert.ok(res.headers['neon-request-id'], '413 lacks neon-request-id');
  assert.match(res.body, /too large/i);
});

test('request body over 10 MiB -> 413 (chunked, no Content-Length)', async () => {
  const res = await rawPost('/sql', DRIVER_HEADERS, bigBodyChunks(), { chunked: true });
  assert.equal(res.status, 413, `body: ${res.body.slice(0, 300)}`);
  assert.match(res.body, /too large/i);
});

test('the driver itself sees the 413 for an oversized query (not a broken connection)', async () => {
  // fetch() uploads the whole body; if the gateway closes the connection
  // right after answering, without draining the rest of the upload, the
  // client's write fails (EPIPE/ECONNRESET) and the 413 is lost: the user
  // then gets "Error connecting to database: fetch failed" instead.
  const sql = httpSql();
  const outcomes = [];
  for (const size of [10 * MiB + 100, 11 * MiB, 10 * MiB + 100, 16 * MiB]) {
    const err = await captureError(() => sql.query('SELECT length($1) AS n', ['x'.repeat(size)]));
    assert.ok(err instanceof NeonDbError, `expected NeonDbError, got ${err}`);
    outcomes.push(err.message.slice(0, 60));
  }
  for (const msg of outcomes) {
    assert.match(msg, /^Server error \(HTTP status 413\)/, `driver outcomes: ${JSON.stringify(outcomes, null, 1)}`);
  }
});

test('a request body just under the limit is accepted', async () => {
  const n = 9 * MiB;
  const res = await postSql({ query: 'SELECT length($1) AS n', params: ['y'.repeat(n)] });
  assert.equal(res.status, 200);
  const json = await res.json();
  assert.deepStrictEqual(json.rows, [[String(n)]]);
});

test('response over 10 MiB -> 507', async () => {
  const res = await postSql({ query: "SELECT repeat('x', 11000000) AS big", params: [] });
  assert.equal(res.status, 507);
  const text = await res.text();
  assert.match(text, /too large/i);
  // many smaller rows adding up to more than 10 MiB are also refused
  const many = await postSql({ query: "SELECT repeat('y', 1000) FROM generate_series(1, 12000)", params: [] });
  assert.equal(many.status, 507);
  await many.text();
  // the driver reports it as a server error with the status
  const sql = httpSql();
  const err = await captureError(() => sql`SELECT repeat('x', 11000000) AS big`);
  assert.ok(err instanceof NeonDbError);
  assert.match(err.message, /^Server error \(HTTP status 507\)/);
  // and the gateway keeps working
  assert.deepStrictEqual(await sql`SELECT 1 AS ok`, [{ ok: 1 }]);
});

test('malformed JSON -> 400 with a flat error body (code and severity empty)', async () => {
  for (const body of ['{"query": "SELECT 1"', 'not json at all', '', '[1,2,3]', '{"params": []}']) {
    const res = await postSql(body);
    assert.equal(res.status, 400, `status for body ${JSON.stringify(body)}`);
    assert.match(res.headers.get('content-type') ?? '', /application\/json/);
    const json = await res.json();
    assert.equal(typeof json.message, 'string', `message for ${JSON.stringify(body)}`);
    assert.ok(json.message.length > 0);
    assert.equal(json.code, '', `code for ${JSON.stringify(body)}`);
    assert.equal(json.severity, '', `severity for ${JSON.stringify(body)}`);
  }
});

test('missing or invalid Neon-Connection-String -> 400', async () => {
  const res = await postSql({ query: 'SELECT 1', params: [] }, { 'Neon-Raw-Text-Output': 'true', 'Neon-Array-Mode': 'true' });
  assert.equal(res.status, 400);
  const json = await res.json();
  assert.equal(typeof json.message, 'string');
  const bad = await postSql({ query: 'SELECT 1', params: [] }, { ...DRIVER_HEADERS, 'Neon-Connection-String': 'mysql://u:p@h/db' });
  assert.equal(bad.status, 400);
  await bad.text();
});

test('invalid Neon-Batch-Isolation-Level -> 400', async () => {
  const res = await postSql(
    { queries: [{ query: 'SELECT 1', params: [] }] },
    { ...DRIVER_HEADERS, 'Neon-Batch-Isolation-Level': 'serializable' },
  );
  assert.equal(res.status, 400);
  await res.text();
});

test('OPTIONS /sql preflight -> 200 with CORS headers', async () => {
  const res = await gw('/sql', {
    method: 'OPTIONS',
    headers: {
      Origin: 'https://example.com',
      'Access-Control-Request-Method': 'POST',
      'Access-Control-Request-Headers': 'neon-connection-string, neon-batch-deferrable',
    },
  });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('access-control-allow-origin'), '*');
  const allowHeaders = (res.headers.get('access-control-allow-headers') ?? '')
    .split(',')
    .map((h) => h.trim().toLowerCase());
  for (const h of [
    'neon-connection-string',
    'neon-raw-text-output',
    'neon-array-mode',
    'neon-batch-isolation-level',
    'neon-batch-read-only',
    'neon-batch-deferrable',
    'authorization',
  ]) {
    assert.ok(allowHeaders.includes(h), `access-control-allow-headers lacks ${h}: ${allowHeaders.join(', ')}`);
  }
  await res.arrayBuffer();
});

test('successful and failed /sql responses carry CORS and JSON content type', async () => {
  const ok = await postSql({ query: 'SELECT 1 AS one', params: [] });
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get('access-control-allow-origin'), '*');
  assert.match(ok.headers.get('content-type') ?? '', /application\/json/);
  await ok.json();
  const bad = await postSql({ query: 'SELECT 1/0', params: [] });
  assert.equal(bad.status, 400);
  assert.equal(bad.headers.get('access-control-allow-origin'), '*');
  const err = await bad.json();
  assert.equal(err.code, '22012');
  assert.equal(err.severity, 'ERROR');
  assert.equal(err.message, 'division by zero');
  // flat error body: all fields present, absent ones null, positions as strings
  for (const k of [
    'message', 'code', 'detail', 'hint', 'position', 'internalPosition', 'internalQuery', 'severity', 'where',
    'table', 'column', 'schema', 'dataType', 'constraint', 'file', 'line', 'routine',
  ]) {
    assert.ok(k in err, `error body lacks ${k}`);
  }
  assert.equal(err.detail, null);
  assert.equal(typeof err.line, 'string');
});

test('raw/array-mode success body has the exact driver-facing shape', async () => {
  const res = await postSql({ query: 'SELECT $1::int AS id, NULL::text AS n, true AS b', params: ['7'] });
  assert.equal(res.status, 200);
  const json = await res.json();
  assert.deepStrictEqual(Object.keys(json).sort(), ['command', 'fields', 'rowAsArray', 'rowCount', 'rows']);
  assert.deepStrictEqual(json.rows, [['7', null, 't']]);
  assert.equal(json.command, 'SELECT');
  assert.equal(json.rowCount, 1);
  assert.equal(json.rowAsArray, true);
  assert.deepStrictEqual(
    json.fields.map((f) => [f.name, f.dataTypeID, f.format]),
    [
      ['id', 23, 'text'],
      ['n', 25, 'text'],
      ['b', 16, 'text'],
    ],
  );
  for (const f of json.fields) {
    for (const k of ['tableID', 'columnID', 'dataTypeSize', 'dataTypeModifier']) assert.equal(typeof f[k], 'number', k);
  }
  const ddl = await postSql({ query: `CREATE TEMP TABLE ${uniqueName('shape')} (a int)`, params: [] });
  const ddlJson = await ddl.json();
  assert.deepStrictEqual(ddlJson.fields, []);
  assert.deepStrictEqual(ddlJson.rows, []);
  assert.equal(ddlJson.command, 'CREATE');
  assert.equal(ddlJson.rowCount, null);
  const batch = await postSql({ queries: [] });
  assert.equal(batch.status, 200);
  assert.deepStrictEqual(await batch.json(), { results: [] });
});

test('batch responses echo the transaction option headers', async () => {
  const res = await postSql(
    { queries: [{ query: 'SHOW transaction_isolation', params: [] }] },
    { ...DRIVER_HEADERS, 'Neon-Batch-Isolation-Level': 'RepeatableRead', 'Neon-Batch-Read-Only': 'true' },
  );
  assert.equal(res.status, 200);
  const json = await res.json();
  assert.deepStrictEqual(json.results[0].rows, [['repeatable read']]);
  assert.equal(res.headers.get('neon-batch-isolation-level'), 'RepeatableRead');
  assert.equal(res.headers.get('neon-batch-read-only'), 'true');
});

test('non-/sql paths and other methods -> 400', async () => {
  for (const [path, method] of [
    ['/', 'GET'],
    ['/foo', 'POST'],
    ['/sql/extra', 'POST'],
    ['/sql', 'GET'],
    ['/sql', 'PUT'],
  ]) {
    const res = await gw(path, {
      method,
      headers: method === 'GET' ? {} : DRIVER_HEADERS,
      body: method === 'GET' ? undefined : JSON.stringify({ query: 'SELECT 1', params: [] }),
    });
    assert.equal(res.status, 400, `${method} ${path}`);
    await res.arrayBuffer();
  }
});

test('without raw/array headers: typed JSON with object rows', async () => {
  const headers = { 'Neon-Connection-String': DATABASE_URL };
  const res = await postSql({ query: `SELECT 1::int AS a, true AS b, '{"x":1}'::jsonb AS c, 5::int8 AS d` }, headers);
  assert.equal(res.status, 200);
  const json = await res.json();
  assert.deepStrictEqual(json.rows, [{ a: 1, b: true, c: { x: 1 }, d: '5' }]);
  assert.equal(json.rowAsArray, false);
  assert.equal(json.command, 'SELECT');
  assert.equal(json.rowCount, 1);
  assert.deepStrictEqual(
    json.fields.map((f) => f.name),
    ['a', 'b', 'c', 'd'],
  );

  // more typed conversions
  const more = await postSql(
    {
      query: `SELECT 2::int2 AS i2, 1.5::float8 AS f, 'NaN'::float8 AS nan, 'Infinity'::float4 AS inf,
          1.25::numeric AS num, 'txt' AS t, NULL::int AS n, false AS fb, '[1,"a",null]'::json AS j,
          ARRAY[1,2,NULL]::int[] AS ia, '{{1,2},{3,4}}'::int[] AS ia2, '[2:3]={7,8}'::int[] AS bounded,
          ARRAY['a', NULL, 'q"x']::text[] AS ta, ARRAY[true, false]::bool[] AS ba, '{}'::int[] AS empty,
          ARRAY['{"k":1}']::jsonb[] AS ja`,
    },
    headers,
  );
  assert.equal(more.status, 200);
  const m = (await more.json()).rows[0];
  assert.deepStrictEqual(m, {
    i2: 2,
    f: 1.5,
    nan: 'NaN',
    inf: 'Infinity',
    num: '1.25',
    t: 'txt',
    n: null,
    fb: false,
    j: [1, 'a', null],
    ia: [1, 2, null],
    ia2: [
      [1, 2],
      [3, 4],
    ],
    bounded: [7, 8],
    ta: ['a', null, 'q"x'],
    ba: [true, false],
    empty: [],
    ja: [{ k: 1 }],
  });

  // typed values in array mode, and raw text in object mode
  const arr = await postSql({ query: 'SELECT 1::int AS a, true AS b' }, { ...headers, 'Neon-Array-Mode': 'true' });
  const arrJson = await arr.json();
  assert.deepStrictEqual(arrJson.rows, [[1, true]]);
  assert.equal(arrJson.rowAsArray, true);
  const raw = await postSql({ query: 'SELECT 1::int AS a, true AS b' }, { ...headers, 'Neon-Raw-Text-Output': 'true' });
  const rawJson = await raw.json();
  assert.deepStrictEqual(rawJson.rows, [{ a: '1', b: 't' }]);
  assert.equal(rawJson.rowAsArray, false);

  // per-query arrayMode in the body overrides the header
  const perQuery = await postSql({ query: 'SELECT 1::int AS a', arrayMode: true }, headers);
  assert.deepStrictEqual((await perQuery.json()).rows, [[1]]);

  // JSON (non-string) params from non-driver clients
  const params = await postSql(
    { query: 'SELECT $1::int + 1 AS n, $2::bool AS b, $3::jsonb AS j, $4::int[] AS a, $5::text AS t', params: [41, true, { z: [1] }, [1, 2], null] },
    headers,
  );
  assert.equal(params.status, 200);
  assert.deepStrictEqual((await params.json()).rows, [{ n: 42, b: true, j: { z: [1] }, a: [1, 2], t: null }]);
});

test('every response carried a distinct neon-request-id', () => {
  assert.ok(requestIds.length >= 20, `only ${requestIds.length} responses seen`);
  assert.equal(new Set(requestIds).size, requestIds.length, 'request ids repeat');
});

/** The backends running (or idle in a transaction after) a statement containing `marker`. */
async function backendsWith(marker) {
  const r = await client.query(
    `SELECT pid, state, backend_xid IS NOT NULL AS wrote FROM pg_stat_activity
     WHERE query LIKE $1 AND pid <> pg_backend_pid()`,
    [`%${marker}%`],
  );
  return r.rows;
}

test('aborting the request cancels the running query (client disconnect = cancel)', async () => {
  const sql = httpSql();
  const controller = new AbortController();
  const marker = uniqueName('abort_single');
  const request = captureError(() =>
    sql.query(`WITH ins AS (INSERT INTO ${T_CANCEL} VALUES (1) RETURNING 1) SELECT pg_sleep(3) AS ${marker} FROM ins`, [], {
      fetchOptions: { signal: controller.signal },
    }),
  );
  // Abort once Postgres runs the statement (so the request did reach it).
  await waitFor(async () => (await backendsWith(marker)).some((b) => b.state === 'active'), 'the statement runs in Postgres');
  const aborted = Date.now();
  controller.abort();
  const err = await request;
  assert.ok(err instanceof NeonDbError, `expected NeonDbError, got ${err}`);
  assert.match(String(err.sourceError?.name ?? err.message), /Abort/);
  assert.ok(Date.now() - aborted < 1000, 'the driver should give up as soon as the request is aborted');

  // The statement ends (cancelled) well before its 3 s sleep would have, and never commits.
  await waitFor(async () => (await backendsWith(marker)).every((b) => b.state !== 'active'), 'the statement is cancelled');
  assert.ok(Date.now() - aborted < 2500, `the statement ran on for ${Date.now() - aborted} ms after the abort`);
  const rows = await client.query(`SELECT count(*)::int AS n FROM ${T_CANCEL}`);
  assert.equal(rows.rows[0].n, 0, 'the INSERT must not have committed: the query should have been cancelled');
  const active = await client.query(
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active' AND pid <> pg_backend_pid()`,
    [`%INSERT INTO ${T_CANCEL}%pg_sleep%`],
  );
  assert.equal(active.rows[0].n, 0, 'the cancelled query is still running');

  // the gateway still serves requests afterwards
  assert.deepStrictEqual(await sql`SELECT 1 AS ok`, [{ ok: 1 }]);
});

test('aborting a batch rolls it back', async () => {
  const sql = httpSql();
  const controller = new AbortController();
  const tbl = sql.unsafe(T_CANCEL);
  const marker = uniqueName('abort_batch');
  const request = captureError(() =>
    sql.transaction(
      [sql`INSERT INTO ${tbl} VALUES (2)`, sql`SELECT pg_sleep(3) AS ${sql.unsafe(marker)}`, sql`INSERT INTO ${tbl} VALUES (3)`],
      { fetchOptions: { signal: controller.signal } },
    ),
  );
  // The batch reached Postgres: its transaction runs the sleep after its first INSERT
  // (so it holds a transaction id). Abort then.
  await waitFor(
    async () => (await backendsWith(marker)).some((b) => b.state === 'active' && b.wrote),
    'the batch runs in Postgres, its first INSERT done',
  );
  controller.abort();
  const err = await request;
  assert.ok(err instanceof NeonDbError, `expected NeonDbError, got ${err}`);
  assert.match(String(err.sourceError?.name ?? err.message), /Abort/);
  // Its backend leaves the transaction (cancelled and rolled back, or closed)...
  await waitFor(
    async () => (await backendsWith(marker)).every((b) => b.state !== 'active' && b.state !== 'idle in transaction'),
    'the batch is over in Postgres',
  );
  // ...without committing either INSERT.
  const rows = await client.query(`SELECT count(*)::int AS n FROM ${T_CANCEL}`);
  assert.equal(rows.rows[0].n, 0);
});

