// Sessions through the gateway (the driver's Client over the WebSocket tunnel, node-postgres over
// the gateway's Postgres TCP port) against node-postgres straight to the same Postgres, all
// measured in this run on loopback. Bounded: fixed query and connection counts.
//
// Run with: make bench   (scripts/bench.sh starts Postgres and a release gateway, then runs this)

import { Client, neonConfig } from '@neondatabase/serverless';
import pg from 'pg';
import ws from 'ws';

for (const name of ['GATEWAY_HTTP', 'DATABASE_URL', 'DIRECT_DATABASE_URL']) {
  if (!process.env[name]) throw new Error(`${name} is not set; run this through scripts/bench.sh`);
}
const gateway = new URL(process.env.GATEWAY_HTTP);
neonConfig.webSocketConstructor = ws;
neonConfig.useSecureWebSocket = false;
neonConfig.wsProxy = (host, port) => `${gateway.host}/v2?address=${host}:${port}`;
const viaWs = process.env.DATABASE_URL;
const direct = process.env.DIRECT_DATABASE_URL;
const viaTcp = `postgres://postgres:postgres@${gateway.hostname}:${gateway.port}/main`;

const QUERY = 'SELECT $1::int AS n, now() AS t';
const QUERIES = Number(process.env.BENCH_QUERIES ?? 2000);
const CONNECTS = Number(process.env.BENCH_CONNECTS ?? 200);

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** Runs `op(i)` `total` times one after another; returns throughput and latencies. */
async function measure(name, total, op) {
  for (let i = 0; i < Math.min(20, total); i++) await op(i); // warm up
  const latencies = [];
  const started = performance.now();
  for (let i = 0; i < total; i++) {
    const t0 = performance.now();
    await op(i);
    latencies.push(performance.now() - t0);
  }
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return { name, qps: total / seconds, p50: percentile(latencies, 50), p99: percentile(latencies, 99) };
}

async function persistent(name, make) {
  const client = make();
  await client.connect();
  try {
    return await measure(name, QUERIES, (i) => client.query(QUERY, [i]));
  } finally {
    await client.end();
  }
}

function perQuery(name, make) {
  return measure(name, CONNECTS, async (i) => {
    const client = make();
    await client.connect();
    await client.query(QUERY, [i]);
    await client.end();
  });
}

const rows = [
  await persistent('pg direct, persistent connection', () => new pg.Client({ connectionString: direct })),
  await persistent('pg via gateway TCP, persistent connection', () => new pg.Client({ connectionString: viaTcp })),
  await persistent('driver via gateway WebSocket, persistent', () => new Client(viaWs)),
  // The driver's default coalesceWrites waits a timer tick (about 1 ms in Node) before each
  // send; without it the row shows what the tunnel itself costs.
  await persistent('driver via gateway WebSocket, no coalesceWrites', () => {
    const client = new Client(viaWs);
    client.neonConfig.coalesceWrites = false;
    return client;
  }),
  await perQuery('pg direct, connect per query', () => new pg.Client({ connectionString: direct })),
  await perQuery('pg via gateway TCP, connect per query', () => new pg.Client({ connectionString: viaTcp })),
  await perQuery('driver via gateway WebSocket, connect per query', () => new Client(viaWs)),
];

const fmt = (n, digits = 2) => n.toFixed(digits).padStart(9);
console.log(`\n${'benchmark (sequential)'.padEnd(52)}${'queries/s'.padStart(11)}${'p50 ms'.padStart(9)}${'p99 ms'.padStart(9)}`);
for (const r of rows) console.log(`${r.name.padEnd(52)}${fmt(r.qps, 0).padStart(11)}${fmt(r.p50)}${fmt(r.p99)}`);
const by = (prefix) => rows.find((r) => r.name.startsWith(prefix));
const ratio = (a, b) => (a.qps / b.qps).toFixed(2);
console.log('\nratios (throughput against pg direct in this run; 1.00 = no overhead):');
console.log(`  gateway TCP relay, persistent:          ${ratio(by('pg via gateway TCP, persistent'), by('pg direct, persistent'))}x`);
console.log(`  gateway WebSocket, persistent:          ${ratio(by('driver via gateway WebSocket, persistent'), by('pg direct, persistent'))}x`);
console.log(`  gateway WebSocket, no coalesceWrites:   ${ratio(by('driver via gateway WebSocket, no coalesce'), by('pg direct, persistent'))}x`);
console.log(`  gateway TCP relay, connect per query:   ${ratio(by('pg via gateway TCP, connect'), by('pg direct, connect'))}x`);
console.log(`  gateway WebSocket, connect per query:   ${ratio(by('driver via gateway WebSocket, connect'), by('pg direct, connect'))}x`);
