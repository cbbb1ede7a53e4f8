// The real @neondatabase/serverless driver over the gateway's HTTP endpoint
// must return exactly what node-postgres returns over TCP from the same
// Postgres: parsed rows, field metadata, command tags and error fields.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  pg,
  httpSql,
  pgClient,
  pgQuery,
  uniqueName,
  variantUrl,
  assertSameValues,
  assertSameResult,
  fieldSummary,
  fieldDetails,
  errorSummary,
  captureError,
  NeonDbError,
  requireEnv,
} from './helpers.js';
import { WakeApi } from './stack.js';

let sql; // rows only
let sqlFull; // fullResults: true
let client; // node-postgres, direct TCP
let serverVersionNum;
const cleanup = []; // SQL run at the end, in reverse order

const MOOD = uniqueName('mood');
const T_ENUM = uniqueName('enumtab');
const T_UNIQ = uniqueName('uniq');
const T_CHECK = uniqueName('chk');
const T_FK_PARENT = uniqueName('fkparent');
const T_FK_CHILD = uniqueName('fkchild');
const T_META = uniqueName('meta');
const T_RET_H = uniqueName('ret_h');
const T_RET_P = uniqueName('ret_p');
const F_PERFORM = uniqueName('fn_perform');
const F_RAISE = uniqueName('fn_raise');

before(async () => {
  sql = httpSql();
  sqlFull = httpSql({ fullResults: true });
  client = await pgClient();
  serverVersionNum = Number((await client.query('SHOW server_version_num')).rows[0].server_version_num);

  const setup = [
    [`CREATE TYPE ${MOOD} AS ENUM ('sad', 'ok', 'happy', 'it''s "odd"')`, `DROP TYPE IF EXISTS ${MOOD}`],
    [
      `CREATE TABLE ${T_ENUM} (id int PRIMARY KEY, m ${MOOD}, ms ${MOOD}[])`,
      `DROP TABLE IF EXISTS ${T_ENUM}`,
    ],
    [`CREATE TABLE ${T_UNIQ} (id int PRIMARY KEY, email text UNIQUE)`, `DROP TABLE IF EXISTS ${T_UNIQ}`],
    [
      `CREATE TABLE ${T_CHECK} (id int PRIMARY KEY, qty int NOT NULL CONSTRAINT ${T_CHECK}_qty_positive CHECK (qty > 0))`,
      `DROP TABLE IF EXISTS ${T_CHECK}`,
    ],
    [`CREATE TABLE ${T_FK_PARENT} (id int PRIMARY KEY)`, `DROP TABLE IF EXISTS ${T_FK_PARENT}`],
    [
      `CREATE TABLE ${T_FK_CHILD} (id int PRIMARY KEY, parent_id int REFERENCES ${T_FK_PARENT}(id))`,
      `DROP TABLE IF EXISTS ${T_FK_CHILD}`,
    ],
    [
      `CREATE TABLE ${T_META} (id serial PRIMARY KEY, name varchar(40) NOT NULL, price numeric(10,2), tags text[], created timestamptz DEFAULT now())`,
      `DROP TABLE IF EXISTS ${T_META}`,
    ],
    [`CREATE TABLE ${T_RET_H} (id serial PRIMARY KEY, v text, n int8)`, `DROP TABLE IF EXISTS ${T_RET_H}`],
    [`CREATE TABLE ${T_RET_P} (id serial PRIMARY KEY, v text, n int8)`, `DROP TABLE IF EXISTS ${T_RET_P}`],
  ];
  for (const [create, drop] of setup) {
    cleanup.push(drop);
    await client.query(create);
  }
  await client.query(`INSERT INTO ${T_FK_PARENT} VALUES (1)`);
  await client.query(`INSERT INTO ${T_UNIQ} VALUES (1, 'taken@example.com')`);
  await client.query(
    `INSERT INTO ${T_ENUM} VALUES (1, 'happy', '{sad,happy}'), (2, 'it''s "odd"', ARRAY['it''s "odd"', NULL]::${MOOD}[]), (3, NULL, NULL)`,
  );
  await client.query(
    `INSERT INTO ${T_META} (name, price, tags) VALUES ('widget', 9.99, '{a,b}'), ('gadget', NULL, '{}')`,
  );
});

after(async () => {
  if (client) {
    for (const stmt of cleanup.reverse()) {
      await client.query(stmt).catch((e) => console.error(`cleanup failed: ${stmt}: ${e.message}`));
    }
    await client.end();
  }
});

// plpgsql functions are created by the tests that need them (not in before()),
// so a server without a working plpgsql fails only those tests.
const FUNCTIONS = {
  [F_PERFORM]: `CREATE FUNCTION ${F_PERFORM}(x int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  PERFORM nosuchcol FROM (SELECT 1 AS a) s;
  RETURN x;
END $$`,
  [F_RAISE]: `CREATE FUNCTION ${F_RAISE}(x int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  IF x > 1 THEN
    RAISE EXCEPTION 'value % is too big', x
      USING DETAIL = 'detail: x=' || x, HINT = 'pass something <= 1', ERRCODE = '22023';
  END IF;
  RETURN x;
END $$`,
};
async function ensureFunction(name) {
  if (FUNCTIONS[name] === null) return;
  cleanup.push(`DROP FUNCTION IF EXISTS ${name}(int)`);
  await client.query(FUNCTIONS[name]);
  FUNCTIONS[name] = null;
}

/** Run `text` with the driver (sql.query, fullResults) and node-postgres; compare everything. */
async function compare(text, params = [], { httpOpts = {}, pgOpts = {}, label } = {}) {
  const h = await sql.query(text, params, { fullResults: true, ...httpOpts });
  const p = await pgQuery(client, text, params, pgOpts);
  assertSameResult(h, p, label ?? text);
  return { h, p };
}

/** Run the same statement with both and compare the thrown errors field by field. */
async function compareError(text, params = [], label) {
  const pgErr = await captureError(() => pgQuery(client, text, params));
  assert.ok(pgErr instanceof pg.DatabaseError, `node-postgres should raise a DatabaseError: ${pgErr}`);
  const httpErr = await captureError(() => sql.query(text, params));
  assert.ok(httpErr instanceof NeonDbError, `driver should raise NeonDbError, got ${httpErr?.name}: ${httpErr?.message}`);
  assert.equal(httpErr.name, 'NeonDbError');
  assert.deepStrictEqual(errorSummary(httpErr), errorSummary(pgErr), label ?? text);
  return { httpErr, pgErr };
}

// ---------------------------------------------------------------------------
// Scalar types
// ---------------------------------------------------------------------------

test('integers: int2/int4/int8 incl. min/max, oid', async () => {
  const { h } = await compare(`SELECT
      32767::int2 AS i2max, (-32768)::int2 AS i2min, 0::int2 AS i2zero,
      2147483647::int4 AS i4max, (-2147483648)::int4 AS i4min, (-1)::int4 AS i4neg,
      9223372036854775807::int8 AS i8max, (-9223372036854775808)::int8 AS i8min,
      9007199254740993::int8 AS i8unsafe, 42::int8 AS i8small,
      4294967295::oid AS oidmax, 7 AS untyped_int, 3000000000 AS untyped_big`);
  // int8 stays a string with the default parsers (no precision loss)
  assert.equal(h.rows[0].i8max, '9223372036854775807');
  assert.equal(h.rows[0].i8min, '-9223372036854775808');
  assert.equal(h.rows[0].i2min, -32768);
  assert.equal(h.rows[0].i4max, 2147483647);
});

test('numeric: big precision, scale, NaN, negative, zero', async () => {
  const cols = [
    `'123456789012345678901234567890.123456789012345678901234567890'::numeric AS big`,
    `'-0.000000000000000000000000000001'::numeric AS tiny`,
    `'NaN'::numeric AS nan`,
    `0::numeric AS zero`,
    `1.50::numeric(10,2) AS scaled`,
    `'1e100'::numeric AS huge`,
    `(2::numeric ^ 200) AS pow`,
  ];
  if (serverVersionNum >= 140000) cols.push(`'Infinity'::numeric AS inf`, `'-Infinity'::numeric AS ninf`);
  const { h } = await compare(`SELECT ${cols.join(', ')}`);
  assert.equal(h.rows[0].big, '123456789012345678901234567890.123456789012345678901234567890');
  assert.equal(h.rows[0].scaled, '1.50');
});

test('float4/float8 incl. NaN, Infinity, -Infinity, -0, extremes', async () => {
  const { h } = await compare(`SELECT
      'NaN'::float8 AS nan8, 'Infinity'::float8 AS inf8, '-Infinity'::float8 AS ninf8,
      'NaN'::float4 AS nan4, 'Infinity'::float4 AS inf4, '-Infinity'::float4 AS ninf4,
      0.1::float8 AS tenth8, 0.1::float4 AS tenth4, 1.5::float4 AS onehalf4,
      '-0'::float8 AS negzero, 1.7976931348623157e308::float8 AS max8, 5e-324::float8 AS min8,
      3.4028235e38::float4 AS max4, 1e-45::float4 AS min4, 1/3::float8 AS third, 123456789.123456789::float8 AS long8`);
  assert.ok(Number.isNaN(h.rows[0].nan8));
  assert.equal(h.rows[0].inf8, Infinity);
  assert.equal(h.rows[0].ninf4, -Infinity);
  assert.ok(Object.is(h.rows[0].negzero, -0));
  assert.equal(h.rows[0].tenth8, 0.1);
});

test('booleans', async () => {
  const { h } = await compare(`SELECT true AS t, false AS f, NULL::bool AS n, 't'::bool AS t2, 'off'::bool AS f2`);
  assert.deepStrictEqual(h.rows[0], { t: true, f: false, n: null, t2: true, f2: false });
});

test('text: unicode, empty, quotes, backslashes, newlines, char/varchar/name', async () => {
  const { h } = await compare(`SELECT
      'héllo wörld — 🐘 日本語 \u00e9' AS unicode, '' AS empty, 'it''s "quoted"' AS quotes,
      E'back\\\\slash \\\\x41 C:\\\\path' AS backslashes, E'line1\\nline2\\r\\n\\ttab' AS newlines,
      E'nul-free \\u0001 control' AS control, 'NULL' AS null_word, '  padded  ' AS spaces,
      'abc'::char(5) AS bpchar, 'abc'::varchar(10) AS varchar, 'relname'::name AS name,
      repeat('ab', 5000) AS long_text, '{"not":"json"}'::text AS jsonish`);
  assert.equal(h.rows[0].unicode, 'héllo wörld — 🐘 日本語 é');
  assert.equal(h.rows[0].empty, '');
  assert.equal(h.rows[0].backslashes, 'back\\slash \\x41 C:\\path');
  assert.equal(h.rows[0].newlines, 'line1\nline2\r\n\ttab');
  assert.equal(h.rows[0].bpchar, 'abc  ');
});

test('text round-trips through parameters unchanged', async () => {
  const values = [
    'héllo wörld — 🐘 日本語',
    '',
    `it's "quoted"`,
    'back\\slash \\x41',
    'line1\nline2\r\n\ttab',
    '{"a":1}',
    '{1,2,3}',
    'NULL',
    ' spaces ',
    '\u2028\u2029 separators',
    '$1 not a placeholder',
  ];
  const text = `SELECT ${values.map((_, i) => `$${i + 1}::text AS c${i}`).join(', ')}`;
  const { h } = await compare(text, values);
  assert.deepStrictEqual(Object.values(h.rows[0]), values);
  // and through a template
  const rows = await sql`SELECT ${values[0]} AS a, ${values[3]} AS b, ${values[4]} AS c, ${values[2]} AS d`;
  assert.deepStrictEqual(rows, [{ a: values[0], b: values[3], c: values[4], d: values[2] }]);
});

test('misc scalar types: point, circle, money, inet, cidr, macaddr, bit, tsvector, ranges, xid', async () => {
  await compare(`SELECT
      '(1.5,-2)'::point AS pt, '<(1,2),3>'::circle AS circ, '[(0,0),(1,1)]'::lseg AS seg,
      12.34::money AS money, '192.168.0.1/24'::inet AS inet, '10.0.0.0/8'::cidr AS cidr,
      '08:00:2b:01:02:03'::macaddr AS mac, B'10101'::bit(5) AS bits, B'1'::varbit AS vbits,
      'a fat cat'::tsvector AS tsv, '[1,10)'::int4range AS r4, '(,)'::int8range AS r8,
      '[2024-01-01,2024-02-01)'::daterange AS dr, 'int4'::regtype AS regtype, '42'::xid AS xid,
      'pg_class'::regclass AS regclass`);
});

// ---------------------------------------------------------------------------
// bytea
// ---------------------------------------------------------------------------

test('bytea results', async () => {
  const { h } = await compare(`SELECT '\\xdeadbeef'::bytea AS b, ''::bytea AS empty,
      decode('00ff7f80', 'hex') AS bin, convert_to('héllo', 'UTF8') AS utf8, NULL::bytea AS n,
      decode(repeat('ab', 4096), 'hex') AS big`);
  assert.ok(h.rows[0].b instanceof Uint8Array);
  assert.equal(Buffer.from(h.rows[0].b).toString('hex'), 'deadbeef');
  assert.equal(h.rows[0].empty.length, 0);
});

test('bytea parameters through the template (driver appends ::bytea)', async () => {
  const buf = Buffer.from([0, 1, 2, 0x7f, 0x80, 0xfe, 0xff]);
  const u8 = new Uint8Array([65, 66, 67]);
  const view = new DataView(new Uint8Array([9, 8, 7, 6]).buffer, 1, 2);
  const h = await sqlFull`SELECT ${buf} AS buf, ${u8} AS u8, ${view} AS view, length(${buf}) AS len, ${Buffer.alloc(0)} AS empty`;
  const p = await pgQuery(
    client,
    'SELECT $1::bytea AS buf, $2::bytea AS u8, $3::bytea AS view, length($4::bytea) AS len, $5::bytea AS empty',
    [buf, Buffer.from(u8), Buffer.from([8, 7]), buf, Buffer.alloc(0)],
  );
  assertSameResult(h, p);
  assert.equal(Buffer.from(h.rows[0].u8).toString(), 'ABC');
  assert.equal(h.rows[0].len, 7);
  assert.equal(h.fields[0].dataTypeID, 17);
  // the same through sql.query with an explicit cast
  const q = await sql.query('SELECT $1::bytea AS b', [buf]);
  assert.equal(Buffer.from(q[0].b).toString('hex'), buf.toString('hex'));
});

test("bytea via sql.query('SELECT $1', [buf]) comes back as text \\x...", async () => {
  const h = await sql.query('SELECT $1 AS v', [new Uint8Array([0x41, 0x42, 0x43])], { fullResults: true });
  assert.deepStrictEqual(h.rows, [{ v: '\\x414243' }]);
  assert.equal(h.fields[0].dataTypeID, 25);
  // node-postgres gets the same result when handed the same wire value
  const p = await pgQuery(client, 'SELECT $1 AS v', ['\\x414243']);
  assertSameResult(h, p);
});

// ---------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------

test('json and jsonb: objects, arrays, strings, numbers, null', async () => {
  const { h } = await compare(`SELECT
      '{"a":{"b":[1,2,{"c":null}]},"s":"x \\"q\\" \\\\ é","n":-1.5e10}'::json AS obj_json,
      '{"a":{"b":[1,2,{"c":null}]},"s":"x \\"q\\" \\\\ é","n":-1.5e10}'::jsonb AS obj_jsonb,
      '[1,"two",null,true,{"x":[]}]'::jsonb AS arr, '"just a string"'::jsonb AS str,
      '42'::json AS num, '3.141592653589793238462643383279'::jsonb AS precise,
      'null'::jsonb AS json_null, NULL::jsonb AS sql_null, '{}'::jsonb AS empty_obj, '[]'::json AS empty_arr,
      '{"dup":1,"dup":2}'::json AS dup_json, '{"dup":1,"dup":2}'::jsonb AS dup_jsonb,
      '"\\u00e9\\ud83d\\udc18"'::json AS escapes, jsonb_build_object('k', now()::date) AS built`);
  assert.deepStrictEqual(h.rows[0].arr, [1, 'two', null, true, { x: [] }]);
  assert.equal(h.rows[0].str, 'just a string');
  assert.equal(h.rows[0].json_null, null);
  assert.equal(h.rows[0].num, 42);
});

test('json and jsonb parameters (objects are JSON.stringify-ed)', async () => {
  const obj = { a: 1, nested: { b: [1, 'x', null, true], s: 'é "q" \\' }, empty: {} };
  const arr = [1, { two: 2 }, [3]];
  const h = await sqlFull`SELECT ${obj}::jsonb AS o, ${obj}::json AS oj, ${JSON.stringify(arr)}::jsonb AS a,
      ${'"s"'}::jsonb AS s, ${'null'}::jsonb AS jn, ${null}::jsonb AS sn, ${obj}::jsonb -> 'nested' -> 'b' AS path`;
  const p = await pgQuery(
    client,
    `SELECT $1::jsonb AS o, $2::json AS oj, $3::jsonb AS a, $4::jsonb AS s, $5::jsonb AS jn, $6::jsonb AS sn, $7::jsonb -> 'nested' -> 'b' AS path`,
    [obj, obj, JSON.stringify(arr), '"s"', 'null', null, obj],
  );
  assertSameResult(h, p);
  assert.deepStrictEqual(h.rows[0].o, obj);
  assert.deepStrictEqual(h.rows[0].a, arr);
});

// ---------------------------------------------------------------------------
// Date / time
// ---------------------------------------------------------------------------

test('date, time, timetz, timestamp, timestamptz incl. infinity and BC', async () => {
  const { h } = await compare(`SELECT
      '2024-02-29'::date AS d, 'infinity'::date AS d_inf, '-infinity'::date AS d_ninf,
      '0044-03-15 BC'::date AS d_bc, '0001-01-01'::date AS d_ad1, '9999-12-31'::date AS d_max,
      '12:34:56.789'::time AS t, '00:00:00'::time AS t_midnight, '24:00:00'::time AS t_24,
      '12:34:56+05:30'::timetz AS ttz, '23:59:59.999999-08'::timetz AS ttz2,
      '2024-01-02 03:04:05.678912'::timestamp AS ts, '2024-01-02 03:04:05'::timestamp(0) AS ts0,
      'infinity'::timestamp AS ts_inf, '-infinity'::timestamp AS ts_ninf,
      '0100-01-01 00:00:00 BC'::timestamp AS ts_bc,
      '2024-06-01 12:00:00+02'::timestamptz AS tstz, '2024-06-01 12:00:00.123456Z'::timestamptz AS tstz_us,
      'infinity'::timestamptz AS tstz_inf, '-infinity'::timestamptz AS tstz_ninf,
      '0300-07-04 10:00:00+00 BC'::timestamptz AS tstz_bc,
      '1970-01-01 00:00:00+00'::timestamptz AS epoch`);
  assert.ok(h.rows[0].d instanceof Date);
  assert.equal(h.rows[0].ts_inf, Infinity);
  assert.equal(h.rows[0].tstz_ninf, -Infinity);
  assert.equal(h.rows[0].epoch.getTime(), 0);
  assert.equal(h.rows[0].t, '12:34:56.789');
  assert.equal(h.rows[0].ttz, '12:34:56+05:30');
});

test('interval', async () => {
  const { h } = await compare(`SELECT
      '1 year 2 mons 3 days 04:05:06.789'::interval AS full_iv, '-1 day'::interval AS neg_day,
      '0'::interval AS zero, '-1 year -2 mons +3 days -04:05:06'::interval AS mixed,
      '1.5 seconds'::interval AS frac, '1000 hours'::interval AS hours, '-00:00:00.000001'::interval AS tiny,
      make_interval(years => 178000000) AS huge, NULL::interval AS n`);
  assert.equal(h.rows[0].full_iv.years, 1);
  assert.equal(h.rows[0].full_iv.days, 3);
  assert.equal(h.rows[0].full_iv.milliseconds, 789);
});

test('session settings that shape text output match a direct connection', async () => {
  // These decide how values are rendered; the gateway's backend session must
  // use the server defaults just like a plain node-postgres connection.
  const settings = [
    'DateStyle',
    'IntervalStyle',
    'TimeZone',
    'extra_float_digits',
    'client_encoding',
    'standard_conforming_strings',
    'bytea_output',
    'lc_monetary',
    'search_path',
  ];
  const text = `SELECT ${settings.map((s, i) => `current_setting('${s}') AS s${i}`).join(', ')}`;
  await compare(text);
});

// ---------------------------------------------------------------------------
// uuid, enums, arrays, NULLs
// ---------------------------------------------------------------------------

test('uuid and uuid[]', async () => {
  const { h } = await compare(`SELECT 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'::uuid AS u,
      '00000000-0000-0000-0000-000000000000'::uuid AS nil,
      ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', NULL]::uuid[] AS us, gen_random_uuid() IS NOT NULL AS gen`);
  assert.equal(h.rows[0].u, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
  const id = '6ba7b810-9dad-11d1-80b4-00c04fd430c8';
  const r = await sql`SELECT ${id}::uuid AS id`;
  assert.deepStrictEqual(r, [{ id }]);
});

test('enum type and enum array (custom OIDs)', async () => {
  const { h } = await compare(
    `SELECT 'happy'::${MOOD} AS m, ARRAY['sad','happy']::${MOOD}[] AS ms, 'it''s "odd"'::${MOOD} AS odd,
        ARRAY['it''s "odd"', NULL, 'ok']::${MOOD}[] AS odd_arr, NULL::${MOOD} AS n, '{}'::${MOOD}[] AS empty`,
  );
  // no parser for a custom array type: both leave the Postgres text
  assert.equal(h.rows[0].ms, '{sad,happy}');
  assert.equal(h.rows[0].m, 'happy');
  await compare(`SELECT * FROM ${T_ENUM} ORDER BY id`);
  await compare(`SELECT id FROM ${T_ENUM} WHERE m = $1 OR $2 = ANY(ms) ORDER BY id`, ['happy', 'it\'s "odd"']);
  await compare(`SELECT $1::${MOOD} AS m, $2::${MOOD}[] AS ms`, ['ok', ['sad', 'it\'s "odd"', null]]);
});

test('arrays: int[], text[] with NULLs/quotes, 2-D, empty, custom lower bounds, many element types', async () => {
  const { h } = await compare(`SELECT
      ARRAY[1, 2, NULL, -3]::int[] AS ints, '{}'::int[] AS empty_ints, '{}'::text[] AS empty_texts,
      ARRAY['a', NULL, 'with "quote"', 'back\\slash', '', 'NULL', 'comma,sep', ' space ', '{brace}', 'é🐘']::text[] AS texts,
      '{{1,2},{3,4}}'::int[] AS two_d, '{{{1},{2}},{{3},{4}}}'::int[] AS three_d,
      '{{"a","b"},{NULL,"d\\"q"}}'::text[] AS two_d_text,
      '[2:3]={1,2}'::int[] AS lower_bound, '[0:1][1:2]={{1,2},{3,4}}'::int[] AS lower_bound_2d,
      ARRAY[1, 32767]::int2[] AS i2s, ARRAY[9223372036854775807, -1]::int8[] AS i8s,
      ARRAY[1.5, 'NaN', 'Infinity', '-Infinity']::float8[] AS f8s, ARRAY[0.1]::float4[] AS f4s,
      ARRAY[1.10, 'NaN', 123456789012345678901234567890.5]::numeric[] AS nums,
      ARRAY[true, false, NULL]::bool[] AS bools,
      ARRAY['2024-01-01', 'infinity', NULL]::date[] AS dates,
      ARRAY['2024-01-01 10:00:00']::timestamp[] AS tss,
      ARRAY['2024-01-01 10:00:00+03', '-infinity']::timestamptz[] AS tstzs,
      ARRAY['12:00:00']::time[] AS times,
      ARRAY['1 day', '-2 hours']::interval[] AS ivs,
      ARRAY['{"a":1}', '[1,2]', 'null']::json[] AS jsons, ARRAY['{"a":[1,{"b":null}]}']::jsonb[] AS jsonbs,
      ARRAY['\\x0102'::bytea, '\\x'::bytea, NULL] AS byteas,
      ARRAY['a', 'bc']::char[] AS chars, ARRAY['x', 'y z']::varchar[] AS varchars,
      ARRAY['(1,2)']::point[] AS points, ARRAY[1, 2]::oid[] AS oids, ARRAY['127.0.0.1']::inet[] AS inets,
      ARRAY['[1,2)']::int4range[] AS ranges, ARRAY[NULL, NULL]::int[] AS all_null`);
  assert.deepStrictEqual(h.rows[0].ints, [1, 2, null, -3]);
  assert.deepStrictEqual(h.rows[0].texts, [
    'a',
    null,
    'with "quote"',
    'back\\slash',
    '',
    'NULL',
    'comma,sep',
    ' space ',
    '{brace}',
    'é🐘',
  ]);
  assert.deepStrictEqual(h.rows[0].two_d, [
    [1, 2],
    [3, 4],
  ]);
  assert.deepStrictEqual(h.rows[0].empty_ints, []);
});

test('array parameters (flat, nested, with NULLs, quotes, Dates and Buffers)', async () => {
  const d = new Date('2024-03-04T05:06:07.089Z');
  const params = [
    [1, 2, 3],
    [
      [1, 2],
      [3, 4],
    ],
    ['a', null, 'b"c', 'd\\e', '', 'NULL', 'x,y', undefined],
    [true, false],
    [d, null],
    [Buffer.from('ab'), Buffer.from([0, 255])],
    [1.5, -0.25],
    [],
    [9007199254740993n],
  ];
  await compare(
    `SELECT $1::int[] AS a, $2::int[] AS b, $3::text[] AS c, $4::bool[] AS d, $5::timestamptz[] AS e,
        $6::bytea[] AS f, $7::float8[] AS g, $8::int[] AS h, $9::int8[] AS i`,
    params,
  );
  const r = await sql`SELECT ${[1, 2, 3]}::int[] AS a, ${['x', null, 'y"z']}::text[] AS b, ${[
    ['p', 'q'],
    ['r', 's'],
  ]}::text[] AS c, cardinality(${[1, 2, 3]}::int[]) AS n`;
  assert.deepStrictEqual(r, [
    {
      a: [1, 2, 3],
      b: ['x', null, 'y"z'],
      c: [
        ['p', 'q'],
        ['r', 's'],
      ],
      n: 3,
    },
  ]);
});

test('NULLs of each type', async () => {
  const types = [
    'int2', 'int4', 'int8', 'numeric', 'float4', 'float8', 'bool', 'text', 'varchar', 'bpchar', 'bytea',
    'json', 'jsonb', 'date', 'time', 'timetz', 'timestamp', 'timestamptz', 'interval', 'uuid', MOOD,
    'int4[]', 'text[]', 'jsonb[]', `${MOOD}[]`, 'point', 'inet', 'oid', 'money', 'int4range',
  ];
  const { h } = await compare(`SELECT ${types.map((t, i) => `NULL::${t} AS n${i}`).join(', ')}, NULL AS untyped`);
  for (const v of Object.values(h.rows[0])) assert.equal(v, null);
  assert.equal(h.fields.length, types.length + 1);
});

// ---------------------------------------------------------------------------
// Query forms and options
// ---------------------------------------------------------------------------

test('sql.query(text, params) with positional params, reused and out of order', async () => {
  await compare('SELECT $2::int - $1::int AS diff, $1::text || $1::text AS twice, $3 AS third', [10, 3, 'x']);
  await compare(`SELECT id, name FROM ${T_META} WHERE name = ANY($1) ORDER BY id`, [['widget', 'gadget']]);
  const rows = await sql.query('SELECT $1::int + 1 AS n', [41]);
  assert.deepStrictEqual(rows, [{ n: 42 }]);
});

test('empty result sets keep their fields', async () => {
  const { h } = await compare(`SELECT 1::int AS a, 'x'::text AS b WHERE false`);
  assert.deepStrictEqual(h.rows, []);
  assert.deepStrictEqual(fieldSummary(h.fields), [
    { name: 'a', dataTypeID: 23 },
    { name: 'b', dataTypeID: 25 },
  ]);
  await compare(`SELECT * FROM ${T_META} WHERE id < 0`);
});

test('many rows and duplicate column names', async () => {
  const { h } = await compare(
    `SELECT g AS n, g::text AS t, md5(g::text) AS h FROM generate_series(1, 5000) AS g ORDER BY g`,
  );
  assert.equal(h.rows.length, 5000);
  assert.equal(h.rowCount, 5000);
  // duplicate names: object mode keeps the last, array mode keeps both
  await compare(`SELECT 1 AS x, 2 AS x, 'three' AS x`);
  const arr = await compare(`SELECT 1 AS x, 2 AS x`, [], { httpOpts: { arrayMode: true }, pgOpts: { rowMode: 'array' } });
  assert.deepStrictEqual(arr.h.rows, [[1, 2]]);
  // unnamed and quoted columns
  await compare(`SELECT 1, 2 + 2, 'x' AS "Mixed Case", 'y' AS "with ""quote"""`);
});

test('sql.unsafe() inside templates is inlined verbatim', async () => {
  const col = sql.unsafe('name');
  const table = sql.unsafe(T_META);
  const dir = sql.unsafe('DESC');
  const h = await sqlFull`SELECT id, ${col} FROM ${table} WHERE id >= ${1} ORDER BY id ${dir}`;
  const p = await pgQuery(client, `SELECT id, name FROM ${T_META} WHERE id >= $1 ORDER BY id DESC`, [1]);
  assertSameResult(h, p);
  assert.deepStrictEqual(
    h.rows.map((r) => r.name),
    ['gadget', 'widget'],
  );
  const expr = await sql`SELECT ${sql.unsafe('1 + 1')} AS two, ${sql.unsafe("'lit'")} AS lit`;
  assert.deepStrictEqual(expr, [{ two: 2, lit: 'lit' }]);
});

test('composed templates: nested fragments with renumbered parameters', async () => {
  const lo = 3;
  const hi = 12;
  const cond = sql`n > ${lo} AND n < ${hi}`;
  const notFive = sql`n <> ${5}`;
  const where = sql`WHERE ${cond} AND ${notFive}`;
  const h = await sqlFull`SELECT n, ${'tag'} AS tag FROM generate_series(${0}::int, ${20}::int) AS n ${where} ORDER BY n`;
  const p = await pgQuery(
    client,
    'SELECT n, $1 AS tag FROM generate_series($2::int, $3::int) AS n WHERE n > $4 AND n < $5 AND n <> $6 ORDER BY n',
    ['tag', 0, 20, lo, hi, 5],
  );
  assertSameResult(h, p);
  assert.deepStrictEqual(
    h.rows.map((r) => r.n),
    [4, 6, 7, 8, 9, 10, 11],
  );
  // the same fragment used twice, and a fragment containing binary data
  const frag = sql`${7}::int`;
  const twice = await sql`SELECT ${frag} + ${frag} AS s, length(${sql`${Buffer.from('xyz')}`}) AS l`;
  assert.deepStrictEqual(twice, [{ s: 14, l: 3 }]);
});

test('fullResults: command, rowCount, fields and shape', async () => {
  const { h } = await compare(`SELECT id, name, price, tags FROM ${T_META} ORDER BY id`);
  assert.equal(h.command, 'SELECT');
  assert.equal(h.rowCount, 2);
  assert.equal(h.rowAsArray, false);
  assert.equal(h.viaNeonFetch, true);
  assert.ok(Array.isArray(h.fields));
  const viaTemplate = await sqlFull`SELECT 1::int AS one`;
  assert.equal(viaTemplate.command, 'SELECT');
  assert.equal(viaTemplate.rowCount, 1);
  assert.deepStrictEqual(viaTemplate.rows, [{ one: 1 }]);
});

test('fields metadata (tableID, columnID, size, modifier, format) matches node-postgres', async () => {
  const text = `SELECT m.id, m.name, m.price, m.tags, m.created, 1::int2 AS lit, 'x'::varchar(7) AS vc, now() AS ts
      FROM ${T_META} m ORDER BY m.id`;
  const h = await sql.query(text, [], { fullResults: true });
  const p = await pgQuery(client, text);
  assert.deepStrictEqual(fieldDetails(h.fields), fieldDetails(p.fields));
});

test('arrayMode: neon() option and per-query option', async () => {
  const sqlArr = httpSql({ arrayMode: true });
  const text = `SELECT id, name, tags FROM ${T_META} ORDER BY id`;
  const rows = await sqlArr.query(text);
  const p = await pgQuery(client, text, [], { rowMode: 'array' });
  assertSameValues(rows, p.rows);
  assert.ok(Array.isArray(rows[0]));
  const full = await sql.query(text, [], { arrayMode: true, fullResults: true });
  assertSameResult(full, p);
  assert.equal(full.rowAsArray, true);
  const tmpl = await sqlArr`SELECT ${1}::int AS a, ${'b'} AS b`;
  assert.deepStrictEqual(tmpl, [[1, 'b']]);
});

test('custom types option (getTypeParser overrides: int8 -> BigInt, numeric -> Number)', async () => {
  const types = {
    getTypeParser(oid, format) {
      if (oid === 20) return (v) => BigInt(v);
      if (oid === 1700) return (v) => Number(v);
      return pg.types.getTypeParser(oid, format);
    },
  };
  const text = `SELECT 9223372036854775807::int8 AS big, 1.25::numeric AS num, 42::int4 AS i,
      '2024-01-01'::date AS d, ARRAY[1]::int8[] AS arr, NULL::int8 AS n`;
  const { h } = await compare(text, [], { httpOpts: { types }, pgOpts: { types } });
  assert.equal(h.rows[0].big, 9223372036854775807n);
  assert.equal(h.rows[0].num, 1.25);
  assert.equal(h.rows[0].n, null);
  // a parser that sees raw text for everything
  const raw = { getTypeParser: () => (v) => `raw:${v}` };
  const r = await compare(`SELECT true AS b, 1.5::float8 AS f, '{1,2}'::int[] AS a`, [], {
    httpOpts: { types: raw },
    pgOpts: { types: raw },
  });
  assert.deepStrictEqual(r.h.rows, [{ b: 'raw:t', f: 'raw:1.5', a: 'raw:{1,2}' }]);
});

test('DDL and DML: command and rowCount match node-postgres', async () => {
  const run = async (tbl) => {
    const stmts = [
      `CREATE TABLE ${tbl} (id int PRIMARY KEY, v text)`,
      `INSERT INTO ${tbl} VALUES (1, 'a'), (2, 'b'), (3, 'c')`,
      `INSERT INTO ${tbl} SELECT 10, 'x' WHERE false`,
      `UPDATE ${tbl} SET v = v || '!' WHERE id >= 2`,
      `UPDATE ${tbl} SET v = 'none' WHERE id > 100`,
      `DELETE FROM ${tbl} WHERE id = 1`,
      `SELECT * FROM ${tbl} ORDER BY id`,
      `CREATE INDEX ${tbl}_v_idx ON ${tbl} (v)`,
      `ALTER TABLE ${tbl} ADD COLUMN w int`,
      `COMMENT ON TABLE ${tbl} IS 'sdk test'`,
      `CREATE TABLE ${tbl}_copy AS SELECT * FROM ${tbl}`,
      `CREATE VIEW ${tbl}_view AS SELECT id FROM ${tbl}`,
      `SELECT id FROM ${tbl}_view ORDER BY id`,
      `DROP VIEW ${tbl}_view`,
      `TRUNCATE ${tbl}_copy`,
      `DROP TABLE ${tbl}_copy`,
      `VALUES (1), (2)`,
      `DO $$ BEGIN PERFORM 1; END $$`,
      `SELECT 1 WHERE false`,
      `ANALYZE ${tbl}`,
    ];
    if (serverVersionNum >= 150000) {
      stmts.push(
        `MERGE INTO ${tbl} t USING (VALUES (2, 'm'), (7, 'n')) AS s(id, v) ON t.id = s.id
           WHEN MATCHED THEN UPDATE SET v = s.v WHEN NOT MATCHED THEN INSERT (id, v) VALUES (s.id, s.v)`,
      );
    }
    stmts.push(`DELETE FROM ${tbl}`, `DROP TABLE ${tbl}`);
    return stmts;
  };
  const th = uniqueName('ddl_h');
  const tp = uniqueName('ddl_p');
  cleanup.push(`DROP TABLE IF EXISTS ${th}_copy, ${tp}_copy, ${th}, ${tp} CASCADE`);
  const hs = await run(th);
  const ps = await run(tp);
  for (let i = 0; i < hs.length; i++) {
    const h = await sql.query(hs[i], [], { fullResults: true });
    const p = await pgQuery(client, ps[i]);
    assertSameResult(h, p, ps[i]);
    if (i === 0) {
      assert.equal(h.command, 'CREATE');
      assert.equal(h.rowCount, null);
      assert.deepStrictEqual(h.fields, []);
      assert.deepStrictEqual(h.rows, []);
    }
  }
});

test('INSERT ... RETURNING / UPDATE ... RETURNING / DELETE ... RETURNING', async () => {
  const script = (tbl) => [
    [`INSERT INTO ${tbl} (v, n) VALUES ($1, $2), ($3, $4) RETURNING *`, ['a', 1, 'b', 9007199254740993n]],
    [`UPDATE ${tbl} SET n = n + 1 WHERE v = $1 RETURNING id, n, v || '!' AS bang`, ['a']],
    [`INSERT INTO ${tbl} (v) VALUES ('c') RETURNING id`, []],
    [`DELETE FROM ${tbl} WHERE v IN ('a','c') RETURNING v`, []],
    [`SELECT id, v, n FROM ${tbl} ORDER BY id`, []],
  ];
  const hs = [];
  for (const [text, params] of script(T_RET_H)) hs.push(await sql.query(text, params, { fullResults: true }));
  const ps = [];
  for (const [text, params] of script(T_RET_P)) ps.push(await pgQuery(client, text, params));
  hs.forEach((h, i) => assertSameResult(h, ps[i], `statement ${i}`));
  assert.equal(hs[0].command, 'INSERT');
  assert.equal(hs[0].rowCount, 2);
  assert.deepStrictEqual(
    hs[0].rows.map((r) => [r.v, r.n]),
    [
      ['a', '1'],
      ['b', '9007199254740993'],
    ],
  );
  assert.equal(hs[1].command, 'UPDATE');
  assert.equal(hs[3].command, 'DELETE');
  assert.equal(hs[3].rowCount, 2);
  assert.deepStrictEqual(
    hs[4].rows.map((r) => [r.v, r.n]),
    [['b', '9007199254740993']],
  );
});

test('parameters of every JS kind through the template', async () => {
  const date = new Date('2024-03-04T05:06:07.089Z');
  const obj = { a: 1, b: [true, null, 'x'], c: { d: 'é' } };
  const buf = Buffer.from('bytes\0here');
  const pointLike = { toPostgres: () => '(1,2)' };
  const h = await sqlFull`SELECT ${'str'}::text AS s, ${42}::int AS i, ${-1.5}::float8 AS f,
      ${9007199254740993n}::int8 AS big, ${12345678901234567890123n}::numeric AS bignum,
      ${true}::bool AS t, ${false}::bool AS fa, ${date}::timestamptz AS d, ${date}::date AS dd,
      ${null}::text AS n, ${undefined}::int AS u, ${[1, 2, 3]}::int[] AS arr,
      ${[
        [1, 2],
        [3, 4],
      ]}::int[] AS nested, ${['a', null, 'b"c']}::text[] AS tarr, ${buf} AS buf, ${obj}::jsonb AS obj,
      ${pointLike}::point AS pt, ${'42'} AS untyped, ${7} AS untyped_num, ${NaN}::float8 AS nan,
      ${Infinity}::float8 AS inf, ${0}::int AS zero, ${''}::text AS empty`;
  const p = await pgQuery(
    client,
    `SELECT $1::text AS s, $2::int AS i, $3::float8 AS f, $4::int8 AS big, $5::numeric AS bignum,
      $6::bool AS t, $7::bool AS fa, $8::timestamptz AS d, $9::date AS dd, $10::text AS n, $11::int AS u,
      $12::int[] AS arr, $13::int[] AS nested, $14::text[] AS tarr, $15::bytea AS buf, $16::jsonb AS obj,
      $17::point AS pt, $18 AS untyped, $19 AS untyped_num, $20::float8 AS nan, $21::float8 AS inf,
      $22::int AS zero, $23::text AS empty`,
    [
      'str', 42, -1.5, 9007199254740993n, 12345678901234567890123n, true, false, date, date, null, undefined,
      [1, 2, 3], [[1, 2], [3, 4]], ['a', null, 'b"c'], buf, obj, pointLike, '42', 7, NaN, Infinity, 0, '',
    ],
  );
  assertSameResult(h, p);
  const r = h.rows[0];
  assert.equal(r.s, 'str');
  assert.equal(r.big, '9007199254740993');
  assert.equal(r.bignum, '12345678901234567890123');
  assert.equal(r.d.getTime(), date.getTime());
  assert.equal(r.u, null);
  assert.deepStrictEqual(r.obj, obj);
  assert.deepStrictEqual(r.pt, { x: 1, y: 2 });
  assert.equal(r.untyped, '42');
  assert.equal(r.untyped_num, '7');
  assert.equal(Buffer.from(r.buf).toString('hex'), buf.toString('hex'));
});

test('parameters of every JS kind through sql.query', async () => {
  const date = new Date(Date.UTC(2001, 1, 3, 4, 5, 6, 7));
  const params = [
    'str',
    42,
    2.5,
    123n,
    true,
    date,
    null,
    undefined,
    [1, [2, 3]],
    Buffer.from([1, 2, 3]),
    { k: ['v', 1] },
  ];
  await compare(
    `SELECT $1 AS s, $2::int AS n, $3::numeric AS f, $4::int8 AS b, $5::bool AS t, $6::timestamptz AS d,
        $7::int AS nul, $8::text AS und, $9::text AS arr_text, $10::bytea AS buf, $11::json AS obj`,
    params,
  );
});

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

test('error: syntax error', async () => {
  const { httpErr } = await compareError('SELEC 1');
  assert.equal(httpErr.code, '42601');
  assert.equal(httpErr.position, '1');
  await compareError('SELECT * FROM');
});

test('error: missing column (position)', async () => {
  const { httpErr } = await compareError(`SELECT id, nosuchcol FROM ${T_META}`);
  assert.equal(httpErr.code, '42703');
  assert.equal(httpErr.message, 'column "nosuchcol" does not exist');
  assert.equal(typeof httpErr.position, 'string');
  await compareError('SELECT * FROM sdkt_no_such_table_xyz');
});

test('error: unique violation (constraint, table, schema, detail)', async () => {
  const { httpErr } = await compareError(`INSERT INTO ${T_UNIQ} VALUES ($1, $2)`, [2, 'taken@example.com']);
  assert.equal(httpErr.code, '23505');
  assert.equal(httpErr.table, T_UNIQ);
  assert.equal(httpErr.schema, 'public');
  assert.equal(httpErr.constraint, `${T_UNIQ}_email_key`);
  assert.match(httpErr.detail, /already exists/);
  await compareError(`INSERT INTO ${T_UNIQ} VALUES (1, 'other@example.com')`);
});

test('error: division by zero', async () => {
  const { httpErr } = await compareError('SELECT 1 / 0');
  assert.equal(httpErr.code, '22012');
  await compareError('SELECT $1::int / $2::int', [1, 0]);
});

test('error: RAISE EXCEPTION with detail/hint from a DO block and a function', async () => {
  const { httpErr } = await compareError(
    `DO $$ BEGIN RAISE EXCEPTION 'boom %', 42 USING DETAIL = 'the detail', HINT = 'the hint', ERRCODE = 'P0001'; END $$`,
  );
  assert.equal(httpErr.message, 'boom 42');
  assert.equal(httpErr.detail, 'the detail');
  assert.equal(httpErr.hint, 'the hint');
  assert.match(httpErr.where, /PL\/pgSQL function inline_code_block/);
  await ensureFunction(F_RAISE);
  const fn = await compareError(`SELECT ${F_RAISE}($1)`, [5]);
  assert.equal(fn.httpErr.code, '22023');
  assert.equal(fn.httpErr.hint, 'pass something <= 1');
  assert.match(fn.httpErr.where, /PL\/pgSQL function/);
});

test('error: inside a plpgsql function (where, internalQuery, internalPosition)', async () => {
  await ensureFunction(F_PERFORM);
  const { httpErr } = await compareError(`SELECT ${F_PERFORM}(1)`);
  assert.equal(httpErr.code, '42703');
  assert.equal(httpErr.position, undefined);
  assert.equal(httpErr.internalQuery, 'SELECT nosuchcol FROM (SELECT 1 AS a) s');
  assert.equal(typeof httpErr.internalPosition, 'string');
  assert.match(httpErr.where, new RegExp(`PL/pgSQL function ${F_PERFORM}\\(integer\\) line \\d+ at PERFORM`));
});

test('error: check, not-null and foreign-key constraints; invalid input', async () => {
  const chk = await compareError(`INSERT INTO ${T_CHECK} VALUES (1, -5)`);
  assert.equal(chk.httpErr.code, '23514');
  assert.equal(chk.httpErr.constraint, `${T_CHECK}_qty_positive`);
  assert.equal(chk.httpErr.table, T_CHECK);
  const nn = await compareError(`INSERT INTO ${T_CHECK} (id) VALUES (2)`);
  assert.equal(nn.httpErr.code, '23502');
  assert.equal(nn.httpErr.column, 'qty');
  const fk = await compareError(`INSERT INTO ${T_FK_CHILD} VALUES (1, 999)`);
  assert.equal(fk.httpErr.code, '23503');
  const inv = await compareError('SELECT $1::int AS n', ['not a number']);
  assert.equal(inv.httpErr.code, '22P02');
  const dt = await compareError(`SELECT 'abc'::${MOOD}`);
  assert.equal(dt.httpErr.code, '22P02');
  const cast = await compareError(`SELECT ARRAY[1]::int[] = 'x'::text`);
  assert.equal(cast.httpErr.code, '42883');
  const dom = await compareError(`SELECT 99999::int2`);
  assert.equal(dom.httpErr.code, '22003');
});

test('error: several statements in one query', async () => {
  const { httpErr } = await compareError('SELECT 1; SELECT 2');
  assert.equal(httpErr.code, '42601');
  await assert.rejects(sql`SELECT 1; SELECT 2`, (e) => e instanceof NeonDbError && e.code === '42601');
});

test('error: wrong parameter count', async () => {
  for (const [text, params] of [
    ['SELECT $1::int AS a, $2::int AS b', [1]],
    ['SELECT 1 AS a', [1]],
    ['SELECT $1::int AS a', []],
  ]) {
    const err = await captureError(() => sql.query(text, params));
    assert.ok(err instanceof NeonDbError, `expected NeonDbError for ${text} ${JSON.stringify(params)}, got ${err}`);
    assert.doesNotMatch(err.message, /^Server error/, `should be a 400 query error: ${err.message}`);
  }
  // the gateway is still healthy afterwards
  assert.deepStrictEqual(await sql`SELECT 1 AS ok`, [{ ok: 1 }]);
});

test('error: wrong password (even right after a successful request)', async () => {
  // warm up: a good request first, so a pooled backend may exist
  assert.deepStrictEqual(await sql`SELECT 1 AS ok`, [{ ok: 1 }]);
  const bad = httpSql({}, variantUrl({ password: 'definitely-not-the-password' }));
  const err = await captureError(() => bad`SELECT 1`);
  assert.ok(err instanceof NeonDbError, `expected NeonDbError, got ${err}`);
  assert.match(err.message, /password authentication failed/);
  assert.doesNotMatch(err.message, /^Server error/);
  // an empty password is refused too
  const empty = await captureError(() => httpSql({}, variantUrl({ password: '' }))`SELECT 1`);
  assert.ok(empty instanceof NeonDbError, `expected NeonDbError, got ${empty}`);
  assert.match(empty.message, /password authentication failed/);
  // and the right password still works afterwards
  assert.deepStrictEqual(await sql`SELECT 2 AS ok`, [{ ok: 2 }]);
});

test('connection string variants: IP literal / localhost host, sslmode and channel_binding params', async () => {
  const expected = (await client.query('SELECT current_database() AS db, current_user AS usr')).rows;
  for (const hostname of ['127.0.0.1', 'localhost']) {
    const viaHost = httpSql({}, variantUrl({ hostname }));
    assert.deepStrictEqual(await viaHost`SELECT current_database() AS db, current_user AS usr`, expected, hostname);
  }
  const u = new URL(variantUrl());
  u.search = '?sslmode=require&channel_binding=require';
  const withParams = httpSql({}, u.toString());
  assert.deepStrictEqual(await withParams`SELECT current_database() AS db, current_user AS usr`, expected);
});

test('percent-encoded user and password are decoded', async () => {
  // Roles are made through the wake service's API: tenant roles cannot create roles in SQL.
  const api = new WakeApi(requireEnv('WAKE_URL'), requireEnv('WAKE_ADMIN_TOKEN'));
  const role = uniqueName('role');
  const password = 'p@ss:w/rd%?#& é"\'';
  await api.createRole('db', role, password);
  try {
    await checkEncodedRole(role, password);
  } finally {
    const r = await api.call('DELETE', `/v1/endpoints/db/roles/${role}`);
    assert.equal(r.status, 204, `dropping ${role}: ${r.text}`);
  }
});

async function checkEncodedRole(role, password) {
  const asRole = httpSql({}, variantUrl({ username: role, password }));
  const rows = await asRole`SELECT current_user AS usr, session_user AS sess`;
  assert.deepStrictEqual(rows, [{ usr: role, sess: role }]);
  const wrong = await captureError(() => httpSql({}, variantUrl({ username: role, password: password + 'x' }))`SELECT 1`);
  assert.ok(wrong instanceof NeonDbError);
  assert.match(wrong.message, /password authentication failed/);
}

test('unknown database is a query error, not a crash', async () => {
  const nodb = uniqueName('nodb');
  const err = await captureError(() => httpSql({}, variantUrl({ database: nodb }))`SELECT 1`);
  assert.ok(err instanceof NeonDbError, `expected NeonDbError, got ${err}`);
  assert.equal(err.code, '3D000', `Postgres's own error: ${err.message}`);
  assert.equal(err.message, `database "${nodb}" does not exist`);
  assert.deepStrictEqual(await sql`SELECT 1 AS ok`, [{ ok: 1 }]);
});

test('error: unknown endpoint looks exactly like a wrong password', async () => {
  const host = new URL(variantUrl()).hostname;
  const rest = host.includes('.') && !/^[\d.]+$/.test(host) ? host.slice(host.indexOf('.')) : '.localtest.me';
  const unknownHost = `nosuchendpoint${Date.now().toString(36)}${rest}`;
  const unknown = httpSql({}, variantUrl({ hostname: unknownHost }));
  const wrongPw = httpSql({}, variantUrl({ password: 'definitely-not-the-password' }));
  const e1 = await captureError(() => unknown`SELECT 1`);
  const e2 = await captureError(() => wrongPw`SELECT 1`);
  assert.ok(e1 instanceof NeonDbError);
  assert.match(e1.message, /password authentication failed/);
  // same message, same fields: nothing reveals whether the endpoint exists
  assert.deepStrictEqual(errorSummary(e1), errorSummary(e2));
  // with the right password for a real endpoint, still the same shape
  const e3 = await captureError(() => httpSql({}, variantUrl({ hostname: unknownHost, password: 'x' }))`SELECT 1`);
  assert.deepStrictEqual(errorSummary(e3), errorSummary(e2));
});

test('errors do not poison later queries', async () => {
  await assert.rejects(sql`SELECT 1/0`, (e) => e instanceof NeonDbError && e.code === '22012');
  await assert.rejects(sql`SELEC`, (e) => e instanceof NeonDbError && e.code === '42601');
  const results = await Promise.all(Array.from({ length: 10 }, (_, i) => sql`SELECT ${i}::int AS i`));
  assert.deepStrictEqual(
    results.map((r) => r[0].i),
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
  );
});
