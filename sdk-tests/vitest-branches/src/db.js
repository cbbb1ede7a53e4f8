// The application's data access: what the app ships, unchanged in tests. It reads
// DATABASE_URL when called, so whoever runs it (production, a test file) decides which
// database it talks to. No `if (test)` anywhere.
import { neon, Pool } from '@neondatabase/serverless';

/** One query over HTTP. */
export function sql() {
  return neon(process.env.DATABASE_URL);
}

/** A pool of WebSocket sessions, for interactive transactions. */
export function pool() {
  return new Pool({ connectionString: process.env.DATABASE_URL, max: 2 });
}

/** Adds a todo and returns it. */
export async function addTodo(title) {
  const [todo] = await sql()`INSERT INTO todos (title) VALUES (${title}) RETURNING id, title, done`;
  return todo;
}

/** Marks every todo done in one transaction; how many changed. */
export async function completeAll() {
  const p = pool();
  const client = await p.connect();
  try {
    await client.query('BEGIN');
    const { rowCount } = await client.query('UPDATE todos SET done = true WHERE NOT done');
    await client.query('COMMIT');
    return rowCount;
  } catch (err) {
    await client.query('ROLLBACK');
    throw err;
  } finally {
    client.release();
    await p.end();
  }
}

export async function todos() {
  return sql()`SELECT id, title, done FROM todos ORDER BY id`;
}
