import fs from 'node:fs';
import { expect, test } from 'vitest';
import { addTodo, completeAll, sql, todos } from './src/db.js';

test('another file, another branch: none of the other file\'s rows', async () => {
  const [{ db }] = await sql()`SELECT current_database() AS db`;
  expect(db).toBe(process.env.BRANCH_NAME);
  if (process.env.BRANCH_LOG) fs.appendFileSync(process.env.BRANCH_LOG, `more-todos ${db}\n`);
  await addTodo('from more-todos.test.js');
  expect((await todos()).map((t) => t.title)).toEqual(['seeded', 'from more-todos.test.js']);
  expect(await completeAll()).toBe(2);
});
