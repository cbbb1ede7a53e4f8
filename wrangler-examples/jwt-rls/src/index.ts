// Row-level security with your users' tokens: the Worker forwards the caller's JWT as the
// driver's authToken and queries as role `authenticated`, with no database password anywhere.
// The gateway verifies the token against the endpoint's key set; Postgres's policies compare
// rows with auth.user_id() (the token's `sub`), so each user sees and changes only their rows
// whatever the Worker's SQL says.
//
//   GET    /me          → {"user_id": "..."} as the database sees it
//   GET    /notes       → the caller's notes
//   POST   /notes       {"body": "..."} → the new note (201), owned by the caller
//   DELETE /notes/:id   → the deleted note; 404 for a note that is not the caller's
// Every route needs `Authorization: Bearer <token>`: 401 without one or with a bad one.
import { neon, NeonDbError } from '@neondatabase/serverless';
import { useLocalGateway } from './local-gateway';

export interface Env {
  /** postgresql://authenticated@<endpoint host>/<database>: a role, no password. */
  DATABASE_AUTHENTICATED_URL: string;
  LOCAL_GATEWAY?: string;
}

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    useLocalGateway(env.LOCAL_GATEWAY);
    const token = request.headers.get('Authorization')?.match(/^Bearer ([\w-]+\.[\w-]+\.[\w-]+)$/)?.[1];
    if (!token) return Response.json({ error: 'sign in first (Authorization: Bearer <token>)' }, { status: 401 });
    const sql = neon(env.DATABASE_AUTHENTICATED_URL, { authToken: token });
    const url = new URL(request.url);
    try {
      if (url.pathname === '/me' && request.method === 'GET') {
        const [me] = await sql`SELECT auth.user_id() AS user_id`;
        return Response.json(me);
      }
      if (url.pathname === '/notes' && request.method === 'GET') {
        const notes = await sql`SELECT id, owner, body, created_at FROM user_notes ORDER BY id`;
        return Response.json({ notes });
      }
      if (url.pathname === '/notes' && request.method === 'POST') {
        const { body } = (await request.json()) as { body?: unknown };
        if (typeof body !== 'string') return Response.json({ error: 'a note is {"body": string}' }, { status: 400 });
        const [note] = await sql`INSERT INTO user_notes (body) VALUES (${body}) RETURNING id, owner, body, created_at`;
        return Response.json(note, { status: 201 });
      }
      const del = url.pathname.match(/^\/notes\/(\d+)$/);
      if (del && request.method === 'DELETE') {
        // Another user's note is invisible to this user: the DELETE matches no row.
        const [note] = await sql`DELETE FROM user_notes WHERE id = ${del[1]} RETURNING id, owner, body, created_at`;
        return note ? Response.json(note) : Response.json({ error: 'not found' }, { status: 404 });
      }
      return Response.json({ error: 'not found' }, { status: 404 });
    } catch (err) {
      return errorResponse(err);
    }
  },
} satisfies ExportedHandler<Env>;

/**
 * The gateway refuses a bad token with HTTP 401 and a role no rule allows with 403, before any
 * SQL; the driver reports such a status only in its message ("Server error (HTTP status
 * 401): …"). Rejected rows (23xxx, 42501) are 400; anything else 500.
 */
function errorResponse(err: unknown): Response {
  if (err instanceof SyntaxError) return Response.json({ error: err.message }, { status: 400 });
  if (!(err instanceof NeonDbError)) throw err;
  const refused = Number(/^Server error \(HTTP status (\d{3})\)/.exec(err.message)?.[1]);
  if (refused === 401) return Response.json({ error: 'invalid or expired token' }, { status: 401 });
  if (refused === 403) return Response.json({ error: 'this token may not use the database' }, { status: 403 });
  if (refused === 429) return Response.json({ error: 'busy, try again' }, { status: 429 });
  if (err.code?.startsWith('23') || err.code === '42501') {
    return Response.json({ error: 'rejected by the database', code: err.code }, { status: 400 });
  }
  console.error('query failed', err.code || refused || 'no code');
  return Response.json({ error: 'database error' }, { status: 500 });
}
