import fs from 'node:fs';
import { expect, test } from 'vitest';
import { neonTesting } from './neon-testing.js';
import { addTodo, sql, todos } from '../vitest-branches/src/db.js';

// A database and role named, as neon-testing allows (it checks that the branch lists them):
// as on Neon, a branch's database keeps its parent's name, and its connection string reaches
// the branch's copy. Unset, neon-testing picks them itself.
const branch = neonTesting({
  databaseName: process.env.NEON_DATABASE_NAME || undefined,
  roleName: process.env.NEON_ROLE_NAME || undefined,
});

test('another file, another branch: none of the other file\'s rows', async () => {
  const [{ db }] = await sql()`SELECT current_database() AS db`;
  expect(db).toBe(branch().id);
  if (process.env.BRANCH_LOG) fs.appendFileSync(process.env.BRANCH_LOG, `more-todos ${db}\n`);
  await addTodo('from more-todos.test.js');
  expect((await todos()).map((t) => t.title)).toEqual(['seeded', 'from more-todos.test.js']);
});
