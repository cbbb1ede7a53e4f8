import fs from 'node:fs';
import { expect, test } from 'vitest';
import { neonTesting } from './neon-testing.js';
import { addTodo, sql, todos } from '../vitest-branches/src/db.js';

// Named as on Neon: a branch's databases keep their parent's names (neon-testing checks that
// the branch lists it), and its connection string reaches the branch's copy.
const branch = neonTesting({ databaseName: 'neondb', roleName: 'neondb_owner' });

test('another file, another branch: none of the other file\'s rows', async () => {
  const [{ db }] = await sql()`SELECT current_database() AS db`;
  expect(db).toBe(branch().id);
  if (process.env.BRANCH_LOG) fs.appendFileSync(process.env.BRANCH_LOG, `more-todos ${db}\n`);
  await addTodo('from more-todos.test.js');
  expect((await todos()).map((t) => t.title)).toEqual(['seeded', 'from more-todos.test.js']);
});
