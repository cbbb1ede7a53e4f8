// An interactive transaction over WebSocket from a Worker: a Pool created for this request,
// BEGIN … COMMIT (or ROLLBACK) on one of its clients, and the pool ended with
// ctx.waitUntil(pool.end()) once the answer is on its way.
//
// Why per request: a WebSocket belongs to the request that opened it. A Pool kept in a global
// and reused by the next request fails with "Cannot perform I/O on behalf of a different
// request" (or hangs), so the pool lives and dies with one request.
//
//   POST /accounts   {"id": "alice", "balance": 100} → the account (201)
//   GET  /accounts   → every account and its balance
//   POST /transfer   {"from": "alice", "to": "bob", "amount": 30} → both balances after it;
//                    409 when "from" has too little, 404 when either account does not exist;
//                    on any failure nothing of the transfer stays.
import { Pool, type PoolClient } from '@neondatabase/serverless';
import { useLocalGateway } from './local-gateway';

export interface Env {
  DATABASE_URL: string;
  LOCAL_GATEWAY?: string;
}

export default {
  async fetch(request: Request, env: Env, ctx: ExecutionContext): Promise<Response> {
    useLocalGateway(env.LOCAL_GATEWAY);
    const pool = new Pool({ connectionString: env.DATABASE_URL });
    // A connection error on an idle client would otherwise be an uncaught exception.
    pool.on('error', (err: Error) => console.error('idle client error', err.message));
    try {
      return await route(request, pool);
    } catch (err) {
      return errorResponse(err);
    } finally {
      ctx.waitUntil(pool.end());
    }
  },
} satisfies ExportedHandler<Env>;

async function route(request: Request, pool: Pool): Promise<Response> {
  const url = new URL(request.url);
  if (url.pathname === '/accounts' && request.method === 'GET') {
    const { rows } = await pool.query('SELECT id, balance::int AS balance FROM accounts ORDER BY id');
    return Response.json({ accounts: rows });
  }
  if (url.pathname === '/accounts' && request.method === 'POST') {
    const { id, balance } = (await request.json()) as { id?: unknown; balance?: unknown };
    if (typeof id !== 'string' || !Number.isSafeInteger(balance)) {
      throw new HttpError(400, 'an account is {"id": string, "balance": integer}');
    }
    const { rows } = await pool.query('INSERT INTO accounts (id, balance) VALUES ($1, $2) RETURNING id, balance::int AS balance', [id, balance]);
    return Response.json(rows[0], { status: 201 });
  }
  if (url.pathname === '/transfer' && request.method === 'POST') {
    const { from, to, amount } = (await request.json()) as { from?: unknown; to?: unknown; amount?: unknown };
    if (typeof from !== 'string' || typeof to !== 'string' || from === to || !Number.isSafeInteger(amount)) {
      throw new HttpError(400, 'a transfer is {"from": string, "to": another string, "amount": integer}');
    }
    const client = await pool.connect();
    try {
      return Response.json(await inTransaction(client, () => transfer(client, from, to, amount as number)));
    } finally {
      client.release();
    }
  }
  throw new HttpError(404, 'not found');
}

/** BEGIN, `work`, COMMIT; ROLLBACK when `work` throws (then rethrows). */
async function inTransaction<T>(client: PoolClient, work: () => Promise<T>): Promise<T> {
  await client.query('BEGIN');
  try {
    const result = await work();
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK');
    throw err;
  }
}

async function transfer(client: PoolClient, from: string, to: string, amount: number) {
  // Debit first: the CHECK (balance >= 0) refuses an overdraft (23514) and the missing
  // account shows as no row. The credit's missing account shows the same way, after the
  // debit ran — the ROLLBACK takes the debit back.
  const debit = await client.query('UPDATE accounts SET balance = balance - $2 WHERE id = $1 RETURNING balance::int AS balance', [from, amount]);
  if (debit.rowCount === 0) throw new HttpError(404, `no account ${from}`);
  const credit = await client.query('UPDATE accounts SET balance = balance + $2 WHERE id = $1 RETURNING balance::int AS balance', [to, amount]);
  if (credit.rowCount === 0) throw new HttpError(404, `no account ${to}`);
  const { rows } = await client.query('INSERT INTO transfers (from_id, to_id, amount) VALUES ($1, $2, $3) RETURNING id::int AS id', [from, to, amount]);
  return { transfer: rows[0].id, balances: { [from]: debit.rows[0].balance, [to]: credit.rows[0].balance } };
}

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** The client's mistakes as 4xx (an overdraft is 409), anything else 500. */
function errorResponse(err: unknown): Response {
  if (err instanceof HttpError) return Response.json({ error: err.message }, { status: err.status });
  if (err instanceof SyntaxError) return Response.json({ error: err.message }, { status: 400 });
  const code = (err as { code?: string }).code;
  if (code === '23514') return Response.json({ error: 'insufficient funds or a bad amount', code }, { status: 409 });
  if (code === '23505') return Response.json({ error: 'that account exists', code }, { status: 409 });
  console.error('query failed', code ?? (err instanceof Error ? err.name : typeof err));
  return Response.json({ error: 'database error' }, { status: 500 });
}
