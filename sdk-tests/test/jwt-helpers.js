// Pure helpers of jwt.test.js (no environment, no stack), self-tested in jwks-server.test.js:
// the SQL drizzle-kit generates for a table with Neon RLS policies, the checks on a rejected
// request (the driver's error, HTTP 4xx, a generic message) and the claims envelope the
// gateway installs (docs: /work/jwt-plan.md, design decision 3).

import { is, SQL } from 'drizzle-orm';
import { getTableConfig, PgDialect, PgRole } from 'drizzle-orm/pg-core';

/**
 * The statements drizzle-kit (0.31, `generate`) writes for `table`: CREATE TABLE, then
 * `ALTER TABLE … ENABLE ROW LEVEL SECURITY` (when RLS is enabled or the table has policies),
 * then one CREATE POLICY per policy, in drizzle-kit's format:
 * `CREATE POLICY "<name>" ON "<table>" AS PERMISSIVE FOR SELECT TO "<role>" USING (<sql>) WITH CHECK (<sql>);`
 * Policy expressions are rendered by drizzle's own dialect (`sqlToQuery`), as drizzle-kit does.
 * Only what the tests use is supported: columns with a type, PRIMARY KEY, NOT NULL and an SQL
 * default; policies with `as`, `for`, `to`, `using`, `withCheck`.
 */
export function drizzleKitSql(table, dialect = new PgDialect()) {
  const cfg = getTableConfig(table);
  const q = (name) => `"${name.replace(/"/g, '""')}"`;
  const render = (value) => {
    if (is(value, SQL)) {
      const { sql, params } = dialect.sqlToQuery(value);
      if (params.length) throw new Error('drizzleKitSql: parameters in a policy or default are not supported');
      return sql;
    }
    return String(value);
  };
  const tableName = cfg.schema ? `${q(cfg.schema)}.${q(cfg.name)}` : q(cfg.name);
  const columns = cfg.columns.map((c) => {
    let line = `\t${q(c.name)} ${c.getSQLType()}`;
    if (c.primary) line += ' PRIMARY KEY';
    if (c.default !== undefined) line += ` DEFAULT ${is(c.default, SQL) ? render(c.default) : `'${String(c.default).replace(/'/g, "''")}'`}`;
    if (c.notNull) line += ' NOT NULL';
    return line;
  });
  const out = [`CREATE TABLE ${tableName} (\n${columns.join(',\n')}\n);`];
  if (cfg.enableRLS || cfg.policies.length > 0) out.push(`ALTER TABLE ${tableName} ENABLE ROW LEVEL SECURITY;`);
  for (const p of cfg.policies) {
    const to = (Array.isArray(p.to) ? p.to : p.to === undefined ? ['public'] : [p.to])
      .map((r) => (is(r, PgRole) ? r.name : r))
      .sort()
      .map((r) => (['current_user', 'current_role', 'session_user', 'public'].includes(r) ? r : q(r)))
      .join(', ');
    const as = (p.as ?? 'permissive').toUpperCase();
    const forWhat = (p.for ?? 'all').toUpperCase();
    const using = p.using !== undefined ? ` USING (${render(p.using)})` : '';
    const check = p.withCheck !== undefined ? ` WITH CHECK (${render(p.withCheck)})` : '';
    out.push(`CREATE POLICY ${q(p.name)} ON ${tableName} AS ${as} FOR ${forWhat} TO ${to}${using}${check};`);
  }
  return out;
}

/**
 * Words a rejection must not contain: naming the check that failed (or echoing internals)
 * would tell an attacker which part of a forged token to fix.
 */
export const LEAKY = /expir|signature|\bkid\b|key id|\balg\b|algorithm|audience|\baud\b|issuer|\biss\b|\bnbf\b|not before|not yet valid|jwks|\bcrit\b|base64|decod|jku|x5u|\bjwk\b|panic|backtrace|stack trace|internal error|unwrap/i;

/**
 * Classify the driver's error for a rejected /sql request. `status` is the HTTP status the
 * fetch saw (undefined when it never got an answer). Returns `{ status, message, code, body }`
 * where `message` is the user-facing message (the JSON body's `message` for a non-400 status).
 * Throws (an AssertionError-like Error) when the rejection is not the driver's error, not 4xx,
 * or not generic.
 */
export function rejection(err, status, what) {
  const fail = (why) => {
    const e = new Error(`${what}: ${why}`);
    e.cause = err;
    throw e;
  };
  if (!err || err.name !== 'NeonDbError') fail(`expected the driver's NeonDbError, got ${err?.stack ?? err}`);
  const m = /^Server error \(HTTP status (\d+)\): ([\s\S]*)$/.exec(err.message);
  let seen = status;
  let message = err.message;
  let body;
  if (m) {
    seen = Number(m[1]);
    if (status !== undefined && status !== seen) fail(`status ${status} vs the driver's ${seen}`);
    try {
      body = JSON.parse(m[2]);
    } catch {
      fail(`the ${seen} body is not JSON (the driver's error shape): ${m[2].slice(0, 200)}`);
    }
    if (!body || typeof body.message !== 'string') fail(`the ${seen} body has no "message": ${m[2].slice(0, 200)}`);
    message = body.message;
  } else if (/^Error connecting to database/.test(err.message)) {
    fail(`no HTTP answer: ${err.message}`);
  }
  if (seen === undefined) fail(`unknown HTTP status: ${err.message}`);
  if (!(seen >= 400 && seen < 500)) fail(`expected HTTP 4xx, got ${seen}: ${err.message}`);
  if (typeof message !== 'string' || message.length === 0) fail('empty message');
  if (LEAKY.test(message)) fail(`the message names what failed (not generic): ${JSON.stringify(message)}`);
  return { status: seen, message, code: err.code ?? body?.code, body };
}

/**
 * Parse and check the claims envelope `env` (`gw_auth.claims`) and `mac` (`gw_auth.mac`)
 * against the contract: keys v, pid, bs, role, exp, ctr, claims in that order; mac
 * `v1.<kid>.<64 hex>`. Returns the parsed envelope; throws an Error naming the mismatch.
 */
export function parseEnvelope(env, mac) {
  if (typeof env !== 'string' || env === '') throw new Error(`gw_auth.claims is empty: ${JSON.stringify(env)}`);
  const e = JSON.parse(env);
  const keys = Object.keys(e);
  const want = ['v', 'pid', 'bs', 'role', 'exp', 'ctr', 'claims'];
  if (JSON.stringify(keys) !== JSON.stringify(want)) throw new Error(`envelope keys ${keys}, want ${want}`);
  if (e.v !== 1) throw new Error(`envelope v ${e.v}`);
  for (const k of ['pid', 'bs', 'exp', 'ctr']) if (!Number.isInteger(e[k])) throw new Error(`envelope ${k} is not an integer: ${e[k]}`);
  if (typeof e.role !== 'string') throw new Error('envelope role');
  if (e.claims !== null && (typeof e.claims !== 'object' || Array.isArray(e.claims))) throw new Error('envelope claims');
  if (!/^v1\.\d+\.[0-9a-f]{64}$/.test(mac ?? '')) throw new Error(`gw_auth.mac shape: ${JSON.stringify(mac)}`);
  return e;
}
