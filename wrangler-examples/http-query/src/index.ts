// neon() over HTTP from a Worker: one HTTPS request per query (or per transaction), no
// connection to open or close, so nothing outlives the request.
//
//   GET  /notes?limit=10          the newest notes
//   POST /notes                   {"title": "...", "body": "..."} → the new note (201)
//   POST /notes/batch             {"notes": [{...}, ...]} → all inserted in one transaction,
//                                  or none (the first bad note's error, 400)
//   DELETE /notes/:id             → the deleted note, or 404
import { neon, NeonDbError } from '@neondatabase/serverless';
import { useLocalGateway } from './local-gateway';

export interface Env {
  DATABASE_URL: string;
  LOCAL_GATEWAY?: string;
}

interface NoteInput {
  title: string;
  body?: string;
}

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    useLocalGateway(env.LOCAL_GATEWAY);
    const sql = neon(env.DATABASE_URL);
    const url = new URL(request.url);
    try {
      if (url.pathname === '/notes' && request.method === 'GET') {
        const limit = Math.min(Math.max(Number(url.searchParams.get('limit') ?? 10) || 10, 1), 100);
        const notes = await sql`SELECT id, title, body, created_at FROM notes ORDER BY id DESC LIMIT ${limit}`;
        return Response.json({ notes });
      }
      if (url.pathname === '/notes' && request.method === 'POST') {
        const note = toNote(await request.json());
        const [row] = await sql`INSERT INTO notes (title, body) VALUES (${note.title}, ${note.body ?? ''})
          RETURNING id, title, body, created_at`;
        return Response.json(row, { status: 201 });
      }
      if (url.pathname === '/notes/batch' && request.method === 'POST') {
        const { notes } = (await request.json()) as { notes?: unknown };
        if (!Array.isArray(notes) || notes.length === 0 || notes.length > 100) {
          throw new BadRequest('"notes" must be an array of 1 to 100 notes');
        }
        const inputs = notes.map(toNote);
        // One HTTP request; the gateway runs the statements in one transaction and commits
        // only if every one succeeds.
        const results = await sql.transaction(
          inputs.map((n) => sql`INSERT INTO notes (title, body) VALUES (${n.title}, ${n.body ?? ''}) RETURNING id`),
        );
        return Response.json({ ids: results.map((rows) => rows[0].id) }, { status: 201 });
      }
      const del = url.pathname.match(/^\/notes\/(\d+)$/);
      if (del && request.method === 'DELETE') {
        const [row] = await sql`DELETE FROM notes WHERE id = ${del[1]} RETURNING id, title, body, created_at`;
        return row ? Response.json(row) : Response.json({ error: 'no such note' }, { status: 404 });
      }
      return Response.json({ error: 'not found' }, { status: 404 });
    } catch (err) {
      return errorResponse(err);
    }
  },
} satisfies ExportedHandler<Env>;

class BadRequest extends Error {}

function toNote(value: unknown): NoteInput {
  const v = value as Partial<NoteInput> | null;
  if (typeof v?.title !== 'string' || (v.body !== undefined && typeof v.body !== 'string')) {
    throw new BadRequest('a note is {"title": string, "body"?: string}');
  }
  return { title: v.title, body: v.body };
}

/** Bad JSON and rejected rows are the client's fault (400, with Postgres's code); the rest 500. */
function errorResponse(err: unknown): Response {
  if (err instanceof BadRequest || err instanceof SyntaxError) {
    return Response.json({ error: err.message }, { status: 400 });
  }
  if (err instanceof NeonDbError && err.code?.startsWith('23')) {
    return Response.json({ error: err.message, code: err.code }, { status: 400 });
  }
  // The code only: a message can quote the values a user sent.
  console.error('query failed', (err instanceof NeonDbError && err.code) || (err instanceof Error ? err.name : typeof err));
  return Response.json({ error: 'database error' }, { status: 500 });
}
