// The admin listener serves Prometheus metrics, and the HTTP request counter
// moves when queries are made.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GATEWAY_ADMIN, httpSql } from './helpers.js';

async function scrape() {
  const res = await fetch(GATEWAY_ADMIN + '/metrics');
  assert.equal(res.status, 200, 'GET /metrics');
  const text = await res.text();
  return text;
}

/** Sum of all samples of metrics whose name starts with gateway_http_requests_total. */
function requestsTotal(text) {
  let sum = 0;
  let samples = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^(gateway_http_requests_total[a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)/.exec(line);
    if (!m || m[1].endsWith('_created')) continue;
    const v = Number(m[3]);
    assert.ok(Number.isFinite(v), `unparsable sample: ${line}`);
    sum += v;
    samples += 1;
  }
  return { sum, samples };
}

test('GET /metrics returns Prometheus text with gateway_ metrics', async () => {
  // make sure at least one request has been served
  const sql = httpSql();
  assert.deepStrictEqual(await sql`SELECT 1 AS one`, [{ one: 1 }]);
  const text = await scrape();
  const lines = text.split('\n');
  assert.ok(
    lines.some((l) => l.startsWith('gateway_')),
    `no sample line starting with gateway_ in:\n${text.slice(0, 2000)}`,
  );
  assert.ok(
    lines.some((l) => /^gateway_http_requests_total/.test(l)),
    `no gateway_http_requests_total sample in:\n${text.slice(0, 2000)}`,
  );
});

test('gateway_http_requests_total increases after queries', async () => {
  const sql = httpSql();
  const before = requestsTotal(await scrape());
  assert.ok(before.samples > 0, 'gateway_http_requests_total has no samples');
  const n = 3;
  for (let i = 0; i < n; i++) await sql`SELECT ${i}::int AS i`;
  await sql.transaction([sql`SELECT 1`]);
  await sql`SELECT 1/0`.catch(() => {});
  const after = requestsTotal(await scrape());
  assert.ok(
    after.sum >= before.sum + n,
    `gateway_http_requests_total went from ${before.sum} to ${after.sum} after ${n + 2} requests`,
  );
});
