// Drizzle ORM (drizzle-orm/neon-serverless) on the driver's Pool, over the gateway's
// WebSocket tunnel: CRUD, relational queries, and interactive transactions (db.transaction)
// with commit, rollback, nested savepoints and an isolation level.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Pool } from '@neondatabase/serverless';
import { drizzle } from 'drizzle-orm/neon-serverless';
import { pgTable, serial, integer, text, timestamp, jsonb } from 'drizzle-orm/pg-core';
import { eq, asc, count, relations, sql as dsql } from 'drizzle-orm';
import { neonConfig, DATABASE_URL, GATEWAY_PORT, pgClient, uniqueName, captureError } from './helpers.js';

neonConfig.useSecureWebSocket = false;
neonConfig.wsProxy = (host, port) => `127.0.0.1:${GATEWAY_PORT}/v2?address=${host}:${port}`;

const ACCOUNTS = uniqueName('dzw_accounts');
const TRANSFERS = uniqueName('dzw_transfers');

const accounts = pgTable(ACCOUNTS, {
  id: serial('id').primaryKey(),
  owner: text('owner').notNull(),
  balance: integer('balance').notNull(),
  openedAt: timestamp('opened_at', { withTimezone: true, mode: 'date' }).notNull(),
  meta: jsonb('meta'),
});

const transfers = pgTable(TRANSFERS, {
  id: serial('id').primaryKey(),
  fromId: integer('from_id')
    .notNull()
    .references(() => accounts.id),
  toId: integer('to_id')
    .notNull()
    .references(() => accounts.id),
  amount: integer('amount').notNull(),
});

const accountsRelations = relations(accounts, ({ many }) => ({ sent: many(transfers) }));
const transfersRelations = relations(transfers, ({ one }) => ({
  from: one(accounts, { fields: [transfers.fromId], references: [accounts.id] }),
}));

let pool;
let db;
let direct;
const poolErrors = [];

before(async () => {
  direct = await pgClient();
  await direct.query(`CREATE TABLE ${ACCOUNTS} (
      id serial PRIMARY KEY, owner text NOT NULL, balance integer NOT NULL CHECK (balance >= 0),
      opened_at timestamptz NOT NULL, meta jsonb)`);
  await direct.query(`CREATE TABLE ${TRANSFERS} (
      id serial PRIMARY KEY, from_id integer NOT NULL REFERENCES ${ACCOUNTS}(id),
      to_id integer NOT NULL REFERENCES ${ACCOUNTS}(id), amount integer NOT NULL)`);
  pool = new Pool({ connectionString: DATABASE_URL, max: 4 });
  pool.on('error', (e) => poolErrors.push(e));
  db = drizzle({ client: pool, schema: { accounts, transfers, accountsRelations, transfersRelations } });
});

after(async () => {
  if (pool) await pool.end();
  if (direct) {
    await direct.query(`DROP TABLE IF EXISTS ${TRANSFERS}, ${ACCOUNTS}`).catch((e) => console.error('cleanup:', e.message));
    await direct.end();
  }
  assert.deepStrictEqual(poolErrors, []);
});

const opened = new Date('2024-03-04T05:06:07.089Z');

async function balances() {
  const rows = await db.select({ owner: accounts.owner, balance: accounts.balance }).from(accounts).orderBy(asc(accounts.owner));
  return Object.fromEntries(rows.map((r) => [r.owner, r.balance]));
}

async function directBalances() {
  const { rows } = await direct.query(`SELECT owner, balance FROM ${ACCOUNTS} ORDER BY owner`);
  return Object.fromEntries(rows.map((r) => [r.owner, r.balance]));
}

test('insert, select, update through the Pool over ws', async () => {
  const inserted = await db
    .insert(accounts)
    .values([
      { owner: 'alice', balance: 100, openedAt: opened, meta: { tier: 'gold', tags: ['a', 'b'] } },
      { owner: 'bob', balance: 50, openedAt: opened },
      { owner: 'carol', balance: 0, openedAt: opened, meta: null },
    ])
    .returning();
  assert.equal(inserted.length, 3);
  assert.ok(inserted.every((a) => Number.isInteger(a.id)));
  assert.ok(inserted[0].openedAt instanceof Date);
  assert.equal(inserted[0].openedAt.getTime(), opened.getTime());
  assert.deepStrictEqual(inserted[0].meta, { tier: 'gold', tags: ['a', 'b'] });
  assert.deepStrictEqual(await balances(), { alice: 100, bob: 50, carol: 0 });
  const res = await db.update(accounts).set({ balance: dsql`${accounts.balance} + 1` }).where(eq(accounts.owner, 'carol'));
  assert.equal(res.rowCount, 1);
  assert.deepStrictEqual(await directBalances(), { alice: 100, bob: 50, carol: 1 });
});

/** Move `amount` from one owner to another inside `tx`, recording the transfer. */
async function transfer(tx, from, to, amount) {
  const [a] = await tx.select().from(accounts).where(eq(accounts.owner, from)).for('update');
  const [b] = await tx.select().from(accounts).where(eq(accounts.owner, to)).for('update');
  await tx.update(accounts).set({ balance: a.balance - amount }).where(eq(accounts.id, a.id));
  await tx.update(accounts).set({ balance: b.balance + amount }).where(eq(accounts.id, b.id));
  await tx.insert(transfers).values({ fromId: a.id, toId: b.id, amount });
}

test('db.transaction commits on one connection; others see it only after commit', async () => {
  const result = await db.transaction(async (tx) => {
    const pid1 = (await tx.execute(dsql`SELECT pg_backend_pid() AS pid`)).rows[0].pid;
    await transfer(tx, 'alice', 'bob', 30);
    const pid2 = (await tx.execute(dsql`SELECT pg_backend_pid() AS pid`)).rows[0].pid;
    assert.equal(pid1, pid2, 'one backend connection for the whole transaction');
    assert.deepStrictEqual(await directBalances(), { alice: 100, bob: 50, carol: 1 }, 'not visible before commit');
    return 'done';
  });
  assert.equal(result, 'done');
  assert.deepStrictEqual(await directBalances(), { alice: 70, bob: 80, carol: 1 });
  const [{ n }] = await db.select({ n: count() }).from(transfers);
  assert.equal(n, 1);
});

test('db.transaction: tx.rollback() and a thrown error both roll back', async () => {
  const rolledBack = await captureError(() =>
    db.transaction(async (tx) => {
      await transfer(tx, 'bob', 'carol', 10);
      tx.rollback();
    }),
  );
  assert.equal(rolledBack.constructor.name, 'TransactionRollbackError');

  // a CHECK violation (balance >= 0) inside the transaction: Postgres' error, nothing kept
  const failed = await captureError(() => db.transaction(async (tx) => transfer(tx, 'carol', 'alice', 1000)));
  const code = failed.code ?? failed.cause?.code;
  assert.equal(code, '23514', `expected a check violation, got ${failed.message}`);
  assert.deepStrictEqual(await directBalances(), { alice: 70, bob: 80, carol: 1 });
  const [{ n }] = await db.select({ n: count() }).from(transfers);
  assert.equal(n, 1);
});

test('nested transactions are savepoints; an isolation level is applied', async () => {
  await db.transaction(
    async (tx) => {
      const level = (await tx.execute(dsql`SELECT current_setting('transaction_isolation') AS l`)).rows[0].l;
      assert.equal(level, 'serializable');
      await transfer(tx, 'bob', 'carol', 5);
      await captureError(() =>
        tx.transaction(async (inner) => {
          await transfer(inner, 'bob', 'carol', 7);
          inner.rollback();
        }),
      );
      await tx.transaction(async (inner) => transfer(inner, 'alice', 'carol', 2));
    },
    { isolationLevel: 'serializable' },
  );
  assert.deepStrictEqual(await directBalances(), { alice: 68, bob: 75, carol: 8 });
});

test('relational query with the transfers', async () => {
  const rows = await db.query.accounts.findMany({
    columns: { owner: true },
    with: { sent: { columns: { amount: true }, orderBy: (t, { asc }) => [asc(t.id)] } },
    orderBy: (a, { asc }) => [asc(a.owner)],
  });
  assert.deepStrictEqual(rows, [
    { owner: 'alice', sent: [{ amount: 30 }, { amount: 2 }] },
    { owner: 'bob', sent: [{ amount: 5 }] },
    { owner: 'carol', sent: [] },
  ]);
  const t = await db.query.transfers.findFirst({ where: (t, { eq }) => eq(t.amount, 5), with: { from: true } });
  assert.equal(t.from.owner, 'bob');
  assert.ok(t.from.openedAt instanceof Date);
});
