// node-postgres over Cloudflare Hyperdrive, with this gateway as Hyperdrive's origin.
//
// Hyperdrive keeps warm TCP connections from Cloudflare's network to one Postgres address and
// caches reads; the gateway behind it adds what plain Postgres lacks: scale to zero (the first
// connection wakes the endpoint), per-endpoint limits and usage metering. Code written for
// Hyperdrive and `pg` runs unchanged. Locally, `wrangler dev` connects straight to the
// binding's localConnectionString: the gateway's Postgres port from `make up`.
//
//   POST /visits   {"path": "/x"} → the visit recorded (201)
//   GET  /visits   → visits per path, most visited first
//   POST /visits/batch  {"paths": [...]} → all recorded in one transaction, or none (400)
import { Client } from 'pg';

export interface Env {
  HYPERDRIVE: Hyperdrive;
}

export default {
  async fetch(request: Request, env: Env, ctx: ExecutionContext): Promise<Response> {
    // One client per request: a socket opened in one request cannot be used by another.
    // Through Hyperdrive, connect() is cheap (its pool holds the connections to the origin).
    const client = new Client({ connectionString: env.HYPERDRIVE.connectionString });
    // workerd reports the socket's close after end() as an error ("Stream was cancelled"),
    // against any Postgres; only errors before that are worth a log line.
    let ending = false;
    client.on('error', (err) => ending || console.error('connection error', err.message));
    try {
      await client.connect();
      return await route(request, client);
    } catch (err) {
      return errorResponse(err);
    } finally {
      ending = true;
      ctx.waitUntil(client.end());
    }
  },
} satisfies ExportedHandler<Env>;

async function route(request: Request, client: Client): Promise<Response> {
  const url = new URL(request.url);
  if (url.pathname === '/visits' && request.method === 'GET') {
    const { rows } = await client.query(
      'SELECT path, count(*)::int AS visits FROM visits GROUP BY path ORDER BY visits DESC, path',
    );
    return Response.json({ paths: rows });
  }
  if (url.pathname === '/visits' && request.method === 'POST') {
    const { path } = (await request.json()) as { path?: unknown };
    if (typeof path !== 'string') return badRequest('a visit is {"path": string}');
    const country = (request.cf?.country as string | undefined) ?? null;
    const { rows } = await client.query(
      'INSERT INTO visits (path, country) VALUES ($1, $2) RETURNING id::int AS id, path, country',
      [path, country],
    );
    return Response.json(rows[0], { status: 201 });
  }
  if (url.pathname === '/visits/batch' && request.method === 'POST') {
    const { paths } = (await request.json()) as { paths?: unknown };
    if (!Array.isArray(paths) || paths.length === 0 || paths.length > 100) {
      return badRequest('"paths" must be an array of 1 to 100 paths');
    }
    await client.query('BEGIN');
    try {
      for (const path of paths) {
        // A path that is not a string fails the INSERT (NOT NULL): the ROLLBACK keeps none.
        await client.query('INSERT INTO visits (path) VALUES ($1)', [typeof path === 'string' ? path : null]);
      }
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK');
      throw err;
    }
    return Response.json({ recorded: paths.length }, { status: 201 });
  }
  return Response.json({ error: 'not found' }, { status: 404 });
}

const badRequest = (error: string) => Response.json({ error }, { status: 400 });

/** Rejected rows (23xxx) and bad JSON are 400; anything else 500. */
function errorResponse(err: unknown): Response {
  if (err instanceof SyntaxError) return badRequest(err.message);
  const code = (err as { code?: string }).code;
  if (code?.startsWith('23')) return Response.json({ error: 'rejected by a constraint', code }, { status: 400 });
  console.error('query failed', code ?? (err instanceof Error ? err.name : typeof err));
  return Response.json({ error: 'database error' }, { status: 500 });
}
