import fs from 'node:fs';
import { expect, test } from 'vitest';
import { neonTesting } from './neon-testing.js';
import { addTodo, completeAll, sql, todos } from '../vitest-branches/src/db.js';

const branch = neonTesting();

test('this file has a branch of its own, with the parent\'s rows', async () => {
  const [{ db }] = await sql()`SELECT current_database() AS db`;
  expect(db).toBe(branch().id);
  if (process.env.BRANCH_LOG) fs.appendFileSync(process.env.BRANCH_LOG, `todos ${db}\n`);
  expect((await todos()).map((t) => t.title)).toEqual(['seeded']);
});

test('writes over HTTP and a transaction over WebSocket stay in this branch', async () => {
  await addTodo('from todos.test.js');
  expect(await completeAll()).toBe(2);
  expect((await todos()).every((t) => t.done)).toBe(true);
});
