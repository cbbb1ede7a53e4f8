// sql.transaction([...]): non-interactive batches run as one transaction by
// the gateway, with the Neon-Batch-* options honoured.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  pg,
  httpSql,
  pgClient,
  pgQuery,
  uniqueName,
  assertSameValues,
  assertSameResult,
  captureError,
  NeonDbError,
  sleep,
} from './helpers.js';

let sql;
let client;
const T_ITEMS = uniqueName('tx_items');
const T_ROLLBACK = uniqueName('tx_rollback');
const T_RO = uniqueName('tx_ro');
const T_BEGIN = uniqueName('tx_begin');

before(async () => {
  sql = httpSql();
  client = await pgClient();
  await client.query(`CREATE TABLE ${T_ITEMS} (id int PRIMARY KEY, label text NOT NULL, qty int8, meta jsonb)`);
  await client.query(`CREATE TABLE ${T_ROLLBACK} (id int PRIMARY KEY, note text)`);
  await client.query(`CREATE TABLE ${T_RO} (id int PRIMARY KEY)`);
  await client.query(`CREATE TABLE ${T_BEGIN} (id int PRIMARY KEY)`);
});

after(async () => {
  if (client) {
    await client.query(`DROP TABLE IF EXISTS ${T_ITEMS}, ${T_ROLLBACK}, ${T_RO}, ${T_BEGIN}`).catch((e) => {
      console.error('cleanup failed:', e.message);
    });
    await client.end();
  }
});

async function pgCount(table, where = 'true') {
  const r = await client.query(`SELECT count(*)::int AS n FROM ${table} WHERE ${where}`);
  return r.rows[0].n;
}

test('batch results equal the same statements run with node-postgres in one transaction', async () => {
  const statements = [
    [`INSERT INTO ${T_ITEMS} VALUES ($1, $2, $3, $4), ($5, $6, $7, $8) RETURNING *`, [1, 'one', 10n, { a: 1 }, 2, 'two', null, null]],
    [`UPDATE ${T_ITEMS} SET qty = coalesce(qty, 0) + $1 RETURNING id, qty`, [5]],
    [`SELECT id, label, qty, meta FROM ${T_ITEMS} ORDER BY id`, []],
    [`SELECT count(*) AS n, sum(qty) AS total FROM ${T_ITEMS}`, []],
    [`DELETE FROM ${T_ITEMS} WHERE id = $1`, [2]],
    [`SELECT $1::text AS echo, $2::int[] AS arr`, ['hé', [1, 2]]],
  ];
  const httpResults = await sql.transaction(
    statements.map(([text, params]) => sql.query(text, params)),
    { fullResults: true },
  );
  assert.equal(httpResults.length, statements.length);
  const httpFinal = (await client.query(`SELECT * FROM ${T_ITEMS} ORDER BY id`)).rows;

  // replay with node-postgres
  await client.query(`DELETE FROM ${T_ITEMS}`);
  const pgResults = [];
  await client.query('BEGIN');
  try {
    for (const [text, params] of statements) pgResults.push(await pgQuery(client, text, params));
    await client.query('COMMIT');
  } catch (e) {
    await client.query('ROLLBACK');
    throw e;
  }
  const pgFinal = (await client.query(`SELECT * FROM ${T_ITEMS} ORDER BY id`)).rows;

  httpResults.forEach((h, i) => assertSameResult(h, pgResults[i], statements[i][0]));
  assertSameValues(httpFinal, pgFinal);
  await client.query(`DELETE FROM ${T_ITEMS}`);
});

test('all statements of a batch share one transaction', async () => {
  const [a, b, c] = await sql.transaction([
    sql`SELECT txid_current() AS x, now() AS t, pg_backend_pid() AS pid`,
    sql`SELECT pg_sleep(0.05)`,
    sql`SELECT txid_current() AS x, now() AS t, pg_backend_pid() AS pid`,
  ]);
  assert.equal(b.length, 1);
  assert.deepStrictEqual(c, a);
  assert.notEqual((await sql`SELECT txid_current() AS x`)[0].x, a[0].x);
});

test('isolationLevel: every level takes effect', async () => {
  const expected = {
    ReadUncommitted: 'read uncommitted',
    ReadCommitted: 'read committed',
    RepeatableRead: 'repeatable read',
    Serializable: 'serializable',
  };
  for (const [isolationLevel, shown] of Object.entries(expected)) {
    const [[row], [ro]] = await sql.transaction(
      [sql`SHOW transaction_isolation`, sql`SELECT current_setting('transaction_read_only') AS ro`],
      { isolationLevel },
    );
    assert.equal(row.transaction_isolation, shown, isolationLevel);
    assert.equal(ro.ro, 'off', `${isolationLevel}: read-write by default`);
  }
  // without the option, the server default applies
  const [[def]] = await sql.transaction([sql`SHOW transaction_isolation`]);
  const direct = await client.query('SHOW default_transaction_isolation');
  assert.equal(def.transaction_isolation, direct.rows[0].default_transaction_isolation);
});

test('isolationLevel can also be set on neon() and per transaction() call', async () => {
  const sqlSer = httpSql({ isolationLevel: 'Serializable' });
  const [[a]] = await sqlSer.transaction([sqlSer`SHOW transaction_isolation`]);
  assert.equal(a.transaction_isolation, 'serializable');
  const [[b]] = await sqlSer.transaction([sqlSer`SHOW transaction_isolation`], { isolationLevel: 'RepeatableRead' });
  assert.equal(b.transaction_isolation, 'repeatable read');
});

test('readOnly: true makes the batch read only; writes fail with 25006', async () => {
  const [[row]] = await sql.transaction([sql`SHOW transaction_read_only`], { readOnly: true });
  assert.equal(row.transaction_read_only, 'on');
  const [[rw]] = await sql.transaction([sql`SHOW transaction_read_only`], { readOnly: false });
  assert.equal(rw.transaction_read_only, 'off');

  const err = await captureError(() =>
    sql.transaction([sql`SELECT 1`, sql`INSERT INTO ${sql.unsafe(T_RO)} VALUES (1)`], { readOnly: true }),
  );
  assert.ok(err instanceof NeonDbError, `expected NeonDbError, got ${err}`);
  assert.equal(err.code, '25006');
  assert.equal(err.message, 'cannot execute INSERT in a read-only transaction');
  assert.equal(await pgCount(T_RO), 0);

  // the same error node-postgres sees
  await client.query('BEGIN READ ONLY');
  const pgErr = await captureError(() => pgQuery(client, `INSERT INTO ${T_RO} VALUES (1)`));
  await client.query('ROLLBACK');
  assert.ok(pgErr instanceof pg.DatabaseError);
  for (const k of ['message', 'code', 'severity', 'file', 'routine']) assert.equal(err[k], pgErr[k], k);
});

test('deferrable: true with serializable read only', async () => {
  const [[iso], [ro], [def]] = await sql.transaction(
    [sql`SHOW transaction_isolation`, sql`SHOW transaction_read_only`, sql`SHOW transaction_deferrable`],
    { isolationLevel: 'Serializable', readOnly: true, deferrable: true },
  );
  assert.equal(iso.transaction_isolation, 'serializable');
  assert.equal(ro.transaction_read_only, 'on');
  assert.equal(def.transaction_deferrable, 'on');

  const [[notDef]] = await sql.transaction([sql`SHOW transaction_deferrable`], {
    isolationLevel: 'Serializable',
    readOnly: true,
    deferrable: false,
  });
  assert.equal(notDef.transaction_deferrable, 'off');

  // deferrable alone (no isolation level)
  const [[onlyDef], [onlyDefIso]] = await sql.transaction(
    [sql`SHOW transaction_deferrable`, sql`SHOW transaction_isolation`],
    { deferrable: true },
  );
  assert.equal(onlyDef.transaction_deferrable, 'on');
  assert.equal(onlyDefIso.transaction_isolation, 'read committed');
});

test('arrayMode and fullResults options for the whole batch', async () => {
  const text = `SELECT 1::int AS a, 'x'::text AS b, ARRAY[1,2]::int[] AS c, NULL::int8 AS d`;
  const pgRes = await pgQuery(client, text, [], { rowMode: 'array' });
  const pgObj = await pgQuery(client, text);

  const arr = await sql.transaction([sql.query(text), sql.query(text)], { arrayMode: true });
  assertSameValues(arr, [pgRes.rows, pgRes.rows]);

  const full = await sql.transaction([sql.query(text), sql`SELECT generate_series(1, 3) AS g`], { fullResults: true });
  assertSameResult(full[0], pgObj);
  assert.equal(full[0].rowAsArray, false);
  assert.equal(full[1].rowCount, 3);
  assert.equal(full[1].command, 'SELECT');

  const both = await sql.transaction([sql.query(text)], { arrayMode: true, fullResults: true });
  assertSameResult(both[0], pgRes);
  assert.equal(both[0].rowAsArray, true);

  // per-query options inside a batch override the batch options
  const mixed = await sql.transaction([
    sql.query(text, [], { arrayMode: true }),
    sql.query(text, [], { fullResults: true }),
    sql.query(text),
  ]);
  assertSameValues(mixed[0], pgRes.rows);
  assertSameResult(mixed[1], pgObj);
  assertSameValues(mixed[2], pgObj.rows);

  // options set on neon() apply to transactions too
  const sqlArr = httpSql({ arrayMode: true, fullResults: true });
  const viaNeon = await sqlArr.transaction([sqlArr.query(text)]);
  assertSameResult(viaNeon[0], pgRes);
});

test('function form: sql.transaction(txn => [...])', async () => {
  const results = await sql.transaction((txn) => [
    txn`INSERT INTO ${txn.unsafe(T_ITEMS)} (id, label, qty) VALUES (${100}, ${'fn'}, ${7}) RETURNING id, label`,
    txn`SELECT label, qty FROM ${txn.unsafe(T_ITEMS)} WHERE id = ${100}`,
    txn.query(`UPDATE ${T_ITEMS} SET qty = qty * $1 WHERE id = $2 RETURNING qty`, [3, 100]),
  ]);
  assert.deepStrictEqual(results, [[{ id: 100, label: 'fn' }], [{ label: 'fn', qty: '7' }], [{ qty: '21' }]]);
  const results2 = await sql.transaction((txn) => [txn`DELETE FROM ${txn.unsafe(T_ITEMS)} WHERE id = ${100}`], {
    fullResults: true,
  });
  assert.equal(results2[0].command, 'DELETE');
  assert.equal(results2[0].rowCount, 1);
  assert.equal(await pgCount(T_ITEMS), 0);
});

test('an error in the 2nd query rolls back the 1st and surfaces the error', async () => {
  const err = await captureError(() =>
    sql.transaction([
      sql`INSERT INTO ${sql.unsafe(T_ROLLBACK)} VALUES (${1}, ${'should vanish'})`,
      sql`SELECT 1 / 0 AS boom`,
      sql`INSERT INTO ${sql.unsafe(T_ROLLBACK)} VALUES (${2}, ${'never runs'})`,
    ]),
  );
  assert.ok(err instanceof NeonDbError, `expected NeonDbError, got ${err}`);
  assert.equal(err.code, '22012');
  assert.equal(err.message, 'division by zero');
  assert.equal(err.severity, 'ERROR');
  assert.equal(await pgCount(T_ROLLBACK), 0, 'the first insert must have been rolled back');

  // constraint error in the middle of a batch: the same fields node-postgres reports
  await client.query(`INSERT INTO ${T_ROLLBACK} VALUES (5, 'existing')`);
  const dup = await captureError(() =>
    sql.transaction([
      sql`INSERT INTO ${sql.unsafe(T_ROLLBACK)} VALUES (${6}, ${'new'})`,
      sql`INSERT INTO ${sql.unsafe(T_ROLLBACK)} VALUES (${5}, ${'dup'})`,
    ]),
  );
  const pgDup = await captureError(() => pgQuery(client, `INSERT INTO ${T_ROLLBACK} VALUES ($1, $2)`, [5, 'dup']));
  for (const k of ['message', 'code', 'detail', 'constraint', 'table', 'schema', 'severity', 'routine']) {
    assert.equal(dup[k], pgDup[k], k);
  }
  assert.equal(await pgCount(T_ROLLBACK, 'id = 6'), 0);

  // and the gateway is fine afterwards
  const after = await sql.transaction([sql`SELECT count(*)::int AS n FROM ${sql.unsafe(T_ROLLBACK)}`]);
  assert.deepStrictEqual(after, [[{ n: 1 }]]);
  await client.query(`DELETE FROM ${T_ROLLBACK}`);
});

test('an error in the first statement of a batch and a syntax error', async () => {
  const e1 = await captureError(() => sql.transaction([sql`SELEC 1`, sql`SELECT 2`]));
  assert.ok(e1 instanceof NeonDbError);
  assert.equal(e1.code, '42601');
  assert.equal(e1.position, '1');
  const e2 = await captureError(() => sql.transaction([sql`SELECT 1`, sql`SELECT 1; SELECT 2`]));
  assert.ok(e2 instanceof NeonDbError);
  assert.equal(e2.code, '42601');
});

test('a serialization failure under Serializable is reported', async () => {
  // Two concurrent serializable batches that each read what the other writes.
  await client.query(`INSERT INTO ${T_ITEMS} VALUES (1, 'a', 0, null), (2, 'b', 0, null)`);
  const tbl = sql.unsafe(T_ITEMS);
  const batch = (readId, writeId) =>
    sql.transaction(
      [
        sql`SELECT sum(qty) FROM ${tbl} WHERE id = ${readId}`,
        sql`SELECT pg_sleep(0.5)`,
        sql`UPDATE ${tbl} SET qty = qty + 1 WHERE id = ${writeId}`,
      ],
      { isolationLevel: 'Serializable' },
    );
  const outcomes = await Promise.allSettled([batch(1, 2), batch(2, 1)]);
  const rejected = outcomes.filter((o) => o.status === 'rejected');
  assert.equal(rejected.length, 1, `exactly one batch must fail: ${JSON.stringify(outcomes.map((o) => o.status))}`);
  assert.ok(rejected[0].reason instanceof NeonDbError);
  assert.equal(rejected[0].reason.code, '40001');
  const sum = await client.query(`SELECT sum(qty)::int AS s FROM ${T_ITEMS}`);
  assert.equal(sum.rows[0].s, 1);
  await client.query(`DELETE FROM ${T_ITEMS}`);
});

test('empty batch returns []', async () => {
  assert.deepStrictEqual(await sql.transaction([]), []);
  assert.deepStrictEqual(await sql.transaction(() => []), []);
  assert.deepStrictEqual(await sql.transaction([], { isolationLevel: 'Serializable', readOnly: true }), []);
});

test('a SET inside a batch does not leak into later requests (session reset)', async () => {
  const defaults = (await client.query(`SELECT current_setting('statement_timeout') AS st,
      current_setting('search_path') AS sp, current_setting('application_name') AS app`)).rows[0];
  const [, [shown], [{ pid }]] = await sql.transaction([
    sql`SET statement_timeout = 1234`,
    sql`SHOW statement_timeout`,
    sql`SELECT pg_backend_pid() AS pid`,
    sql`SET search_path TO pg_catalog`,
    sql`SET my.custom_setting = 'leaked'`,
  ]);
  assert.equal(shown.statement_timeout, '1234ms');

  // Later requests until one lands on the batch's backend (the pool hands it out
  // again once its reset is done): none may see the settings, and the check only
  // proves something if one of them ran on that very backend.
  let sameBackend = 0;
  const deadline = Date.now() + 10_000;
  for (let i = 0; sameBackend === 0; i++) {
    assert.ok(Date.now() < deadline, `no request reused backend ${pid} within 10 s (${i} requests)`);
    const [row] = await sql`SELECT pg_backend_pid() AS pid, current_setting('statement_timeout') AS st,
        current_setting('search_path') AS sp, current_setting('my.custom_setting', true) AS custom`;
    if (row.pid === pid) sameBackend++;
    assert.equal(row.st, defaults.st, `statement_timeout leaked into request ${i}`);
    assert.equal(row.sp, defaults.sp, `search_path leaked into request ${i}`);
    assert.ok(row.custom === null || row.custom === '', `custom setting leaked: ${row.custom}`);
    if (sameBackend === 0) await sleep(20);
  }
  assert.equal(sameBackend, 1, `backend ${pid} of the SET batch was reused`);
  const [{ statement_timeout }] = await sql`SHOW statement_timeout`;
  assert.equal(statement_timeout, defaults.st);
  // a single-statement SET does not leak either
  await sql`SET statement_timeout = 4321`;
  for (let i = 0; i < 4; i++) {
    const [row] = await sql`SHOW statement_timeout`;
    assert.equal(row.statement_timeout, defaults.st);
  }
});

test('a lone BEGIN does not leave later requests inside a transaction', async () => {
  await sql`BEGIN`;
  await sql`INSERT INTO ${sql.unsafe(T_BEGIN)} VALUES (${1})`;
  // if the BEGIN had leaked, this INSERT would sit in an open transaction
  assert.equal(await pgCount(T_BEGIN, 'id = 1'), 1);
  const [row] = await sql`SELECT now() = statement_timestamp() AS fresh`;
  assert.equal(typeof row.fresh, 'boolean');
  // a temp table does not survive the request either
  const tmp = uniqueName('tmp');
  await sql.query(`CREATE TEMP TABLE ${tmp} (x int)`);
  await sql.query(`CREATE TEMP TABLE ${tmp} (x int)`); // would fail with 42P07 if it had leaked
});
