// Drizzle ORM in a Worker. Single statements go over HTTP (drizzle-orm/neon-http: no
// connection to manage); the one multi-statement transaction goes over WebSocket
// (drizzle-orm/neon-serverless with a Pool made for this request and ended with
// ctx.waitUntil(pool.end())), because db.transaction() needs a session.
//
//   POST   /projects        {"name": "...", "todos": ["...", ...]} → the project and its todos,
//                           created in one transaction (a bad todo leaves no project)
//   GET    /projects/:id    → the project with its todos
//   POST   /projects/:id/todos  {"title": "..."} → the todo (201)
//   PATCH  /todos/:id       {"done": true} → the todo
//   DELETE /todos/:id       → the deleted todo
import { neon, Pool } from '@neondatabase/serverless';
import { asc, eq } from 'drizzle-orm';
import { drizzle as drizzleHttp } from 'drizzle-orm/neon-http';
import { drizzle as drizzleWs } from 'drizzle-orm/neon-serverless';
import { useLocalGateway } from './local-gateway';
import { projects, todos } from './schema';

export interface Env {
  DATABASE_URL: string;
  LOCAL_GATEWAY?: string;
}

export default {
  async fetch(request: Request, env: Env, ctx: ExecutionContext): Promise<Response> {
    useLocalGateway(env.LOCAL_GATEWAY);
    const url = new URL(request.url);
    const db = drizzleHttp({ client: neon(env.DATABASE_URL) });
    try {
      if (url.pathname === '/projects' && request.method === 'POST') {
        return Response.json(await createProject(env, ctx, await request.json()), { status: 201 });
      }
      const project = url.pathname.match(/^\/projects\/(\d+)(\/todos)?$/);
      if (project && !project[2] && request.method === 'GET') {
        const id = Number(project[1]);
        const [found] = await db.select().from(projects).where(eq(projects.id, id));
        if (!found) return notFound();
        const list = await db.select().from(todos).where(eq(todos.projectId, id)).orderBy(asc(todos.id));
        return Response.json({ ...found, todos: list });
      }
      if (project && project[2] && request.method === 'POST') {
        const { title } = (await request.json()) as { title?: unknown };
        if (typeof title !== 'string') throw new BadRequest('a todo is {"title": string}');
        const [todo] = await db.insert(todos).values({ projectId: Number(project[1]), title }).returning();
        return Response.json(todo, { status: 201 });
      }
      const todo = url.pathname.match(/^\/todos\/(\d+)$/);
      if (todo && request.method === 'PATCH') {
        const { done } = (await request.json()) as { done?: unknown };
        if (typeof done !== 'boolean') throw new BadRequest('a change is {"done": boolean}');
        const [row] = await db.update(todos).set({ done }).where(eq(todos.id, Number(todo[1]))).returning();
        return row ? Response.json(row) : notFound();
      }
      if (todo && request.method === 'DELETE') {
        const [row] = await db.delete(todos).where(eq(todos.id, Number(todo[1]))).returning();
        return row ? Response.json(row) : notFound();
      }
      return notFound();
    } catch (err) {
      return errorResponse(err);
    }
  },
} satisfies ExportedHandler<Env>;

/** A project and its todos in one transaction, over a WebSocket Pool that ends with the request. */
async function createProject(env: Env, ctx: ExecutionContext, body: unknown) {
  const { name, todos: titles = [] } = body as { name?: unknown; todos?: unknown };
  if (typeof name !== 'string' || !Array.isArray(titles) || !titles.every((t) => typeof t === 'string')) {
    throw new BadRequest('a project is {"name": string, "todos"?: string[]}');
  }
  const pool = new Pool({ connectionString: env.DATABASE_URL });
  pool.on('error', (err: Error) => console.error('idle client error', err.message));
  try {
    const db = drizzleWs({ client: pool });
    return await db.transaction(async (tx) => {
      const [project] = await tx.insert(projects).values({ name }).returning();
      const list = titles.length
        ? await tx.insert(todos).values(titles.map((title) => ({ projectId: project.id, title }))).returning()
        : [];
      return { ...project, todos: list };
    });
  } finally {
    ctx.waitUntil(pool.end());
  }
}

class BadRequest extends Error {}

const notFound = () => Response.json({ error: 'not found' }, { status: 404 });

/** Postgres's refusals (23xxx: a duplicate name, an empty title, an unknown project) are 400. */
function errorResponse(err: unknown): Response {
  if (err instanceof BadRequest || err instanceof SyntaxError) {
    return Response.json({ error: err.message }, { status: 400 });
  }
  // Drizzle wraps the driver's error; the Postgres code is on the cause.
  const code = (err as { code?: string }).code ?? ((err as { cause?: { code?: string } }).cause?.code);
  if (code?.startsWith('23')) return Response.json({ error: 'rejected by a constraint', code }, { status: 400 });
  console.error('query failed', code ?? (err instanceof Error ? err.name : typeof err));
  return Response.json({ error: 'database error' }, { status: 500 });
}
