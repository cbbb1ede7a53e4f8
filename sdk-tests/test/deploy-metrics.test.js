// The monitoring shipped in deploy/ watches metrics that exist: every metric name used by the
// Grafana dashboard (deploy/grafana/dashboard.json) and the Prometheus alerts
// (deploy/prometheus/alerts.yml) appears in the live /metrics of the service it comes from:
// gateway_* on the gateway's admin listener, wake_* on the wake service. Histogram series
// (_bucket, _sum, _count) must belong to a family the exposition declares a histogram.
//
// The wake service creates some families only at their first event (a vector with no label
// values yet is not exported), so the test first makes those events happen: a query through
// the gateway (its usage report), and on an endpoint of its own a resize, an autoscaling
// range, a suspend and a wake. Static checks of the same files (PromQL syntax, names against
// the Rust sources) are scripts/check-deploy.sh's.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { parse as parseYaml } from 'yaml';
import { WakeApi, needEnv, poll } from './stack.js';

const ROOT = new URL('../../', import.meta.url);
const DASHBOARD = 'deploy/grafana/dashboard.json';
const ALERTS = 'deploy/prometheus/alerts.yml';
/** Series Prometheus makes itself (no /metrics has them). */
const SYNTHETIC = new Set(['up', 'scrape_duration_seconds', 'scrape_samples_scraped']);

const GATEWAY_ADMIN = needEnv('GATEWAY_ADMIN').replace(/\/+$/, '');
const GATEWAY_HTTP = needEnv('GATEWAY_HTTP').replace(/\/+$/, '');
const DATABASE_URL = needEnv('DATABASE_URL');
const api = new WakeApi(needEnv('WAKE_URL'), needEnv('WAKE_ADMIN_TOKEN'));

const RUN = `${process.pid.toString(36)}${randomBytes(3).toString('hex')}`;
const ENDPOINT = `dm-${RUN}`;

after(async () => {
  const status = await api.remove(ENDPOINT);
  if (status !== 204 && status !== 404) console.error(`cleanup: DELETE ${ENDPOINT} answered ${status}`);
});

// ---------------------------------------------------------------------------
// PromQL: which metric names an expression selects
// ---------------------------------------------------------------------------

const KEYWORDS = new Set([
  'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless',
  'offset', 'atan2', 'inf', 'nan',
]);

/**
 * The metric names a PromQL expression selects: identifiers that are not functions or
 * aggregations (followed by `(`), keywords, label names (inside `{...}`, or the lists of
 * by/without/on/ignoring/group_left/group_right), strings, durations or numbers. Grafana
 * variables ($__rate_interval, ${datasource}) are dropped first.
 */
export function metricNames(expr) {
  let e = expr.replace(/\$\{?\w+\}?/g, ' ');
  e = e.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, ' '); // strings
  e = e.replace(/\{[^{}]*\}/g, ' '); // label matchers
  e = e.replace(/\[[^\]]*\]/g, ' '); // ranges and subqueries
  e = e.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  const names = new Set();
  for (const m of e.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    const word = m[0];
    const before = e[m.index - 1] ?? '';
    if (/[0-9.]/.test(before)) continue; // the exponent of a number (1e3)
    if (e.slice(m.index + word.length).trimStart().startsWith('(')) continue; // a function
    if (KEYWORDS.has(word.toLowerCase())) continue;
    names.add(word);
  }
  return names;
}

/** [where, expr] for every query of the dashboard and every rule of alerts.yml. */
function deployExpressions() {
  const out = [];
  const dashboard = JSON.parse(fs.readFileSync(new URL(DASHBOARD, ROOT), 'utf8'));
  const panels = [...dashboard.panels, ...dashboard.panels.flatMap((p) => p.panels ?? [])];
  for (const panel of panels) {
    for (const target of panel.targets ?? []) {
      if (target.expr) out.push([`${DASHBOARD}: panel "${panel.title}" ${target.refId}`, target.expr]);
    }
  }
  const alerts = parseYaml(fs.readFileSync(new URL(ALERTS, ROOT), 'utf8'));
  for (const group of alerts.groups) {
    for (const rule of group.rules) out.push([`${ALERTS}: ${rule.alert ?? rule.record}`, String(rule.expr)]);
  }
  return out;
}

/** name -> the places that use it, over the dashboard and the alerts. */
function usedMetrics() {
  const used = new Map();
  for (const [where, expr] of deployExpressions()) {
    for (const name of metricNames(expr)) {
      if (!used.has(name)) used.set(name, []);
      used.get(name).push(where);
    }
  }
  return used;
}

// ---------------------------------------------------------------------------
// The Prometheus text exposition
// ---------------------------------------------------------------------------

/** { types: family -> type (from # TYPE), samples: the names of the sample lines }. */
export function parseExposition(text) {
  const types = new Map();
  const samples = new Set();
  for (const line of text.split('\n')) {
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)/.exec(line);
    if (type) {
      types.set(type[1], type[2]);
      continue;
    }
    if (line.startsWith('#') || line.trim() === '') continue;
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(line);
    if (sample) samples.add(sample[1]);
  }
  return { types, samples };
}

const SERIES_SUFFIXES = { _bucket: ['histogram'], _sum: ['histogram', 'summary'], _count: ['histogram', 'summary'] };

/**
 * Why `name` is not in the exposition (undefined when it is): a plain family must be
 * exported with samples of that name; a histogram's series by its suffix, with the family
 * declared a histogram (or a summary, for _sum and _count).
 */
export function missingFrom(exposition, name) {
  const { types, samples } = exposition;
  const type = types.get(name);
  if (type !== undefined) {
    if (type === 'histogram' || type === 'summary') return `${name} is a ${type}: select ${name}_bucket, _sum or _count`;
    return samples.has(name) ? undefined : `${name} is declared but has no samples`;
  }
  for (const [suffix, kinds] of Object.entries(SERIES_SUFFIXES)) {
    if (!name.endsWith(suffix)) continue;
    const base = name.slice(0, -suffix.length);
    const baseType = types.get(base);
    if (baseType === undefined) continue;
    if (!kinds.includes(baseType)) return `${base} is a ${baseType}, it has no ${suffix} series`;
    return samples.has(name) ? undefined : `${base} has no ${name} samples`;
  }
  return `no metric family ${name}`;
}

async function scrape(url) {
  const res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  assert.equal(res.status, 200, `GET ${url}`);
  return parseExposition(await res.text());
}

/** The used names that are missing from the live /metrics, each with why and where used. */
async function missingMetrics(used) {
  const gateway = await scrape(`${GATEWAY_ADMIN}/metrics`);
  const wake = await scrape(`${api.baseUrl}/metrics`);
  const missing = [];
  for (const [name, places] of used) {
    if (SYNTHETIC.has(name)) continue;
    let why;
    if (name.startsWith('gateway_')) why = missingFrom(gateway, name);
    else if (name.startsWith('wake_')) why = missingFrom(wake, name);
    else why = 'neither a gateway_ nor a wake_ metric';
    if (why) missing.push(`${name}: ${why} (used by ${places.join('; ')})`);
  }
  return missing;
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

test('metricNames: functions, label names, strings, ranges, keywords and numbers are not metrics', () => {
  const cases = [
    ['histogram_quantile(0.99, sum by (le) (rate(gateway_http_request_duration_seconds_bucket{job="gateway"}[5m]))) > 1',
      ['gateway_http_request_duration_seconds_bucket']],
    ['sum(rate(a_total{status=~"5..", x="rate(b_total)"}[$__rate_interval])) / sum(rate(a_total[5m] offset 1h))', ['a_total']],
    ['sum by (call, le) (rate(c_seconds_bucket[5m])) and on (instance) group_left (le) d_info', ['c_seconds_bucket', 'd_info']],
    ['up{job="gateway"} == 0', ['up']],
    ['max without (instance) (e_gauge) * 1e3 + 2.5e-3 > bool Inf', ['e_gauge']],
    ['rate(f_total[5m:30s]) unless ignoring (job) g_total', ['f_total', 'g_total']],
    ['sum(rate(h_total{job="wake-service"}[${__rate_interval}]))', ['h_total']],
  ];
  for (const [expr, want] of cases) {
    assert.deepStrictEqual([...metricNames(expr)].sort(), want.sort(), expr);
  }
});

test('missingFrom: histogram series resolve to their family; a counter has no _count', () => {
  const exposition = parseExposition(
    [
      '# HELP h_seconds latency',
      '# TYPE h_seconds histogram',
      'h_seconds_bucket{le="1"} 0',
      'h_seconds_bucket{le="+Inf"} 0',
      'h_seconds_sum 0',
      'h_seconds_count 0',
      '# TYPE x_total counter',
      'x_total{a="b"} 3',
      '# TYPE lazy_total counter',
    ].join('\n'),
  );
  assert.equal(missingFrom(exposition, 'h_seconds_bucket'), undefined);
  assert.equal(missingFrom(exposition, 'h_seconds_count'), undefined);
  assert.equal(missingFrom(exposition, 'x_total'), undefined);
  assert.match(missingFrom(exposition, 'h_seconds'), /histogram/);
  assert.match(missingFrom(exposition, 'x_total_count'), /no metric family|counter/);
  assert.match(missingFrom(exposition, 'lazy_total'), /no samples/);
  assert.match(missingFrom(exposition, 'nope_total'), /no metric family/);
});

test('every metric of the Grafana dashboard and the alerts is in the live /metrics of its service', { timeout: 240_000 }, async () => {
  const used = usedMetrics();
  assert.ok(used.size >= 20, `the dashboard and alerts use ${used.size} metric names`);
  for (const prefix of ['gateway_', 'wake_']) {
    assert.ok([...used.keys()].some((n) => n.startsWith(prefix)), `some ${prefix} metric is used`);
  }

  // The events behind the families the wake service exports only once they happened. A
  // query through the gateway: its next activity report carries usage (wake_usage_reports_total).
  const res = await fetch(`${GATEWAY_HTTP}/sql`, {
    method: 'POST',
    headers: { 'Neon-Connection-String': DATABASE_URL, 'content-type': 'application/json' },
    body: JSON.stringify({ query: 'SELECT 1 AS one', params: [] }),
    signal: AbortSignal.timeout(30_000),
  });
  assert.equal(res.status, 200, `POST /sql through the gateway: ${await res.text()}`);
  await api.create(ENDPOINT, { min_cu: 0.25, max_cu: 0.25 });
  await api.expect(200, 'POST', `/v1/endpoints/${ENDPOINT}/resize`, { body: { cu: 0.5 } });
  await api.expect(200, 'PATCH', `/v1/endpoints/${ENDPOINT}`, { body: { min_cu: 0.25, max_cu: 0.5 } });
  // The autoscaler samples an endpoint whose size may change every 2 s (its decisions).
  await poll(
    async () => (await scrape(`${api.baseUrl}/metrics`)).samples.has('wake_autoscale_decisions_total'),
    'the autoscaler deciding about the new endpoint',
    { timeoutMs: 60_000, intervalMs: 500 },
  );
  const suspend = await api.call('POST', `/v1/endpoints/${ENDPOINT}/suspend`);
  if (suspend.status !== 200) {
    await api.expect(200, 'POST', `/v1/endpoints/${ENDPOINT}/suspend?force=true`);
  }
  await api.expect(200, 'POST', `/v1/endpoints/${ENDPOINT}/wake`);

  let missing = [];
  try {
    await poll(
      async () => {
        missing = await missingMetrics(used);
        return missing.length === 0;
      },
      'every used metric in the live /metrics',
      { timeoutMs: 60_000, intervalMs: 1000 },
    );
  } catch {
    assert.fail(`metrics used by deploy/ but not in the live /metrics:\n  ${missing.join('\n  ')}`);
  }
});
