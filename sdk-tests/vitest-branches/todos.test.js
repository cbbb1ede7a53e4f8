import fs from 'node:fs';
import { expect, test } from 'vitest';
import { addTodo, completeAll, sql, todos } from './src/db.js';

test('this file has a branch of its own, seeded from the template', async () => {
  const [{ db }] = await sql()`SELECT current_database() AS db`;
  expect(db).toBe(process.env.BRANCH_NAME);
  if (process.env.BRANCH_LOG) fs.appendFileSync(process.env.BRANCH_LOG, `todos ${db}\n`);
  expect((await todos()).map((t) => t.title)).toEqual(['seeded']);
});

test('writes stay in this file\'s branch', async () => {
  await addTodo('from todos.test.js');
  await addTodo('another');
  expect((await todos()).map((t) => t.title)).toEqual(['seeded', 'from todos.test.js', 'another']);
});

test('an interactive transaction over WebSocket (Pool)', async () => {
  expect(await completeAll()).toBe(3);
  expect((await todos()).every((t) => t.done)).toBe(true);
});
