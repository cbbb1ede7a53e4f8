// temporary experiment (not committed): where the time of a branch create goes
import fs from 'node:fs';
import { neon, neonConfig } from '@neondatabase/serverless';
const WAKE = 'http://127.0.0.1:4400';
const TOKEN = fs.readFileSync('/work/main/.data/admin-token', 'utf8').trim();
neonConfig.fetchEndpoint = () => 'http://127.0.0.1:4444/sql';
const EP = process.env.EP ?? 'db';
async function call(method, p, body) {
  const r = await fetch(WAKE + p, { method, headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: body && JSON.stringify(body) });
  const t = await r.text();
  if (!r.ok && r.status !== 409) throw new Error(`${method} ${p} ${r.status} ${t}`);
  return t ? JSON.parse(t) : undefined;
}
async function metric(name) {
  const t = await (await fetch(WAKE + '/metrics', { headers: { authorization: `Bearer ${TOKEN}` } })).text();
  const sum = Number((t.match(new RegExp(`^${name}_sum(?:\\{[^}]*\\})? (\\S+)`, 'm')) ?? [])[1] ?? 0);
  const count = Number((t.match(new RegExp(`^${name}_count(?:\\{[^}]*\\})? (\\S+)`, 'm')) ?? [])[1] ?? 0);
  return { sum, count };
}
await call('POST', `/v1/endpoints/${EP}/roles`, { name: 'exp', password: 'exp-password-1' });
await call('POST', `/v1/endpoints/${EP}/databases`, { name: 'small', owner: 'exp' });
const url = (db) => `postgres://exp:exp-password-1@${EP}.localtest.me:4444/${db}`;
await neon(url('small'))`CREATE TABLE IF NOT EXISTS items (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text NOT NULL)`;
await neon(url('small'))`INSERT INTO items (title) SELECT 'item ' || g FROM generate_series(1, 1000) g`;
const post = [], query = [], copy = [];
for (let i = 0; i < Number(process.env.ROUNDS ?? 20); i++) {
  const m0 = await metric('wake_branch_copy_seconds');
  const t0 = performance.now();
  const b = await call('POST', `/v1/endpoints/${EP}/branches`, { from: 'small', ttl_seconds: 600 });
  const t1 = performance.now();
  await neon(url(b.name))`SELECT count(*)::int AS n FROM items`;
  const t2 = performance.now();
  const m1 = await metric('wake_branch_copy_seconds');
  post.push(t1 - t0); query.push(t2 - t1); copy.push((m1.sum - m0.sum) * 1000);
  await call('DELETE', `/v1/endpoints/${EP}/branches/${b.name}`);
}
const p50 = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)].toFixed(1);
console.log(`POST p50 ${p50(post)} ms (copy inside it p50 ${p50(copy)} ms), first query p50 ${p50(query)} ms, total p50 ${p50(post.map((p, i) => p + query[i]))}`);
