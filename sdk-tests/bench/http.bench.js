// SQL over HTTP through the gateway, with the real driver, against node-postgres straight to
// the same Postgres, all measured in this run on loopback. Bounded: fixed query counts.
//
// Run with: make bench   (scripts/bench.sh starts Postgres and a release gateway, then runs this)

import { neon, neonConfig } from '@neondatabase/serverless';
import pg from 'pg';

for (const name of ['GATEWAY_HTTP', 'DATABASE_URL', 'DIRECT_DATABASE_URL']) {
  if (!process.env[name]) throw new Error(`${name} is not set; run this through scripts/bench.sh`);
}
neonConfig.fetchEndpoint = () => `${process.env.GATEWAY_HTTP}/sql`;
const sql = neon(process.env.DATABASE_URL);
const direct = process.env.DIRECT_DATABASE_URL;

const QUERY = 'SELECT $1::int AS n, now() AS t';
const SEQUENTIAL = Number(process.env.BENCH_QUERIES ?? 1000);
const CONCURRENT = Number(process.env.BENCH_CONCURRENT_QUERIES ?? 4000);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 8);

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** Runs `op(i, worker)` `total` times on `workers` concurrent loops; returns throughput and latencies. */
async function measure(name, total, workers, op) {
  for (let i = 0; i < Math.min(50, total); i++) await op(i, i % workers); // warm up
  const latencies = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: workers }, async (_, worker) => {
      while (next < total) {
        const i = next++;
        const t0 = performance.now();
        await op(i, worker);
        latencies.push(performance.now() - t0);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return {
    name,
    qps: total / seconds,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
  };
}

async function withPgClients(count, body) {
  const clients = await Promise.all(
    Array.from({ length: count }, async () => {
      const c = new pg.Client({ connectionString: direct });
      await c.connect();
      return c;
    }),
  );
  try {
    return await body(clients);
  } finally {
    await Promise.all(clients.map((c) => c.end()));
  }
}

const rows = [];
// Baseline 1: a long-lived node-postgres connection (what a server with a pool gets).
await withPgClients(1, async ([c]) => {
  rows.push(await measure('pg, persistent connection, sequential', SEQUENTIAL, 1, (i) => c.query(QUERY, [i])));
});
// Baseline 2: connect, query, disconnect (what a serverless function without a pooler does).
rows.push(
  await measure('pg, new connection per query, sequential', Math.min(SEQUENTIAL, 300), 1, async (i) => {
    const c = new pg.Client({ connectionString: direct });
    await c.connect();
    await c.query(QUERY, [i]);
    await c.end();
  }),
);
rows.push(await measure('driver over gateway HTTP, sequential', SEQUENTIAL, 1, (i) => sql.query(QUERY, [i])));
await withPgClients(CONCURRENCY, async (clients) => {
  rows.push(
    await measure(`pg, ${CONCURRENCY} persistent connections, concurrent`, CONCURRENT, CONCURRENCY, (i, worker) =>
      clients[worker].query(QUERY, [i]),
    ),
  );
});
rows.push(
  await measure(`driver over gateway HTTP, ${CONCURRENCY} concurrent`, CONCURRENT, CONCURRENCY, (i) =>
    sql.query(QUERY, [i]),
  ),
);

const fmt = (n, digits = 2) => n.toFixed(digits).padStart(9);
console.log(`\n${'benchmark'.padEnd(52)}${'queries/s'.padStart(11)}${'p50 ms'.padStart(9)}${'p99 ms'.padStart(9)}`);
for (const r of rows) console.log(`${r.name.padEnd(52)}${fmt(r.qps, 0).padStart(11)}${fmt(r.p50)}${fmt(r.p99)}`);
const by = (prefix) => rows.find((r) => r.name.startsWith(prefix));
const ratio = (a, b) => (a.qps / b.qps).toFixed(2);
console.log('\nratios (throughput, higher is better for the gateway):');
console.log(`  gateway HTTP / pg new connection per query (sequential): ${ratio(by('driver over gateway HTTP, sequential'), by('pg, new connection'))}x`);
console.log(`  gateway HTTP / pg persistent connection (sequential):    ${ratio(by('driver over gateway HTTP, sequential'), by('pg, persistent connection'))}x`);
console.log(`  gateway HTTP / pg persistent connections (concurrent):   ${ratio(by(`driver over gateway HTTP, ${CONCURRENCY}`), by(`pg, ${CONCURRENCY}`))}x`);
