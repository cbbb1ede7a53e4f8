// Drizzle ORM (drizzle-orm/neon-http) on top of the driver, against the gateway.
//
// Note: drizzle's neon-http driver replaces the driver's global type parsers
// for dates/timestamps/intervals; node --test runs each file in its own
// process, so this does not affect the other test files.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { drizzle } from 'drizzle-orm/neon-http';
import { pgTable, serial, integer, text, boolean, timestamp, jsonb } from 'drizzle-orm/pg-core';
import { eq, and, or, gt, asc, desc, inArray, isNull, relations, sql as dsql, count } from 'drizzle-orm';
import { httpSql, pgClient, uniqueName } from './helpers.js';

const AUTHORS = uniqueName('dz_authors');
const POSTS = uniqueName('dz_posts');

const authors = pgTable(AUTHORS, {
  id: serial('id').primaryKey(),
  name: text('name').notNull(),
  active: boolean('active').notNull().default(true),
  karma: integer('karma').notNull().default(0),
  createdAt: timestamp('created_at', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
  profile: jsonb('profile'),
});

const posts = pgTable(POSTS, {
  id: integer('id').primaryKey().generatedAlwaysAsIdentity(),
  authorId: integer('author_id')
    .notNull()
    .references(() => authors.id, { onDelete: 'cascade' }),
  title: text('title').notNull(),
  views: integer('views').notNull().default(0),
  published: boolean('published').notNull().default(false),
  publishedAt: timestamp('published_at', { mode: 'date' }),
  meta: jsonb('meta'),
});

const authorsRelations = relations(authors, ({ many }) => ({ posts: many(posts) }));
const postsRelations = relations(posts, ({ one }) => ({
  author: one(authors, { fields: [posts.authorId], references: [authors.id] }),
}));

let sql;
let db;
let client;

before(async () => {
  sql = httpSql();
  client = await pgClient();
  // schema created with raw SQL through the driver (over the gateway)
  await sql.query(`CREATE TABLE ${AUTHORS} (
      id serial PRIMARY KEY,
      name text NOT NULL,
      active boolean NOT NULL DEFAULT true,
      karma integer NOT NULL DEFAULT 0,
      created_at timestamptz NOT NULL DEFAULT now(),
      profile jsonb)`);
  await sql.query(`CREATE TABLE ${POSTS} (
      id integer PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
      author_id integer NOT NULL REFERENCES ${AUTHORS}(id) ON DELETE CASCADE,
      title text NOT NULL,
      views integer NOT NULL DEFAULT 0,
      published boolean NOT NULL DEFAULT false,
      published_at timestamp,
      meta jsonb)`);
  db = drizzle({ client: sql, schema: { authors, posts, authorsRelations, postsRelations } });
});

after(async () => {
  if (client) {
    await client.query(`DROP TABLE IF EXISTS ${POSTS}, ${AUTHORS}`).catch((e) => console.error('cleanup:', e.message));
    await client.end();
  }
});

const created = new Date('2024-05-06T07:08:09.123Z');
const publishedAt = new Date('2024-06-01T10:00:00.000Z');

test('insert ... returning', async () => {
  const inserted = await db
    .insert(authors)
    .values([
      { name: 'Ada', karma: 10, createdAt: created, profile: { langs: ['en', 'fr'], bio: 'first "programmer"' } },
      { name: 'Grace', karma: 20, createdAt: created, profile: null },
      { name: 'Linus', active: false, createdAt: created },
    ])
    .returning();
  assert.equal(inserted.length, 3);
  assert.deepStrictEqual(
    inserted.map((a) => [a.name, a.active, a.karma, a.profile]),
    [
      ['Ada', true, 10, { langs: ['en', 'fr'], bio: 'first "programmer"' }],
      ['Grace', true, 20, null],
      ['Linus', false, 0, null],
    ],
  );
  assert.ok(inserted[0].createdAt instanceof Date);
  assert.equal(inserted[0].createdAt.getTime(), created.getTime());
  assert.ok(Number.isInteger(inserted[0].id));

  const [ada, grace] = inserted;
  const newPosts = await db
    .insert(posts)
    .values([
      { authorId: ada.id, title: 'Notes on the Engine', views: 100, published: true, publishedAt, meta: { tags: ['math'] } },
      { authorId: ada.id, title: 'Draft', views: 0 },
      { authorId: grace.id, title: 'COBOL', views: 50, published: true, publishedAt, meta: { n: 1.5 } },
    ])
    .returning({ id: posts.id, title: posts.title, publishedAt: posts.publishedAt, meta: posts.meta });
  assert.equal(newPosts.length, 3);
  assert.ok(newPosts.every((p) => Number.isInteger(p.id)));
  assert.equal(newPosts[0].publishedAt.getTime(), publishedAt.getTime());
  assert.deepStrictEqual(newPosts[2].meta, { n: 1.5 });
  assert.equal(newPosts[1].publishedAt, null);

  // the rows are really there (checked over TCP)
  const direct = await client.query(`SELECT count(*)::int AS n FROM ${POSTS}`);
  assert.equal(direct.rows[0].n, 3);
});

test('select with where and orderBy', async () => {
  const active = await db
    .select({ name: authors.name, karma: authors.karma })
    .from(authors)
    .where(and(eq(authors.active, true), gt(authors.karma, 5)))
    .orderBy(desc(authors.karma));
  assert.deepStrictEqual(active, [
    { name: 'Grace', karma: 20 },
    { name: 'Ada', karma: 10 },
  ]);

  const all = await db.select().from(authors).orderBy(asc(authors.name));
  assert.deepStrictEqual(
    all.map((a) => a.name),
    ['Ada', 'Grace', 'Linus'],
  );
  assert.ok(all.every((a) => a.createdAt instanceof Date && a.createdAt.getTime() === created.getTime()));

  const some = await db
    .select({ title: posts.title })
    .from(posts)
    .where(or(inArray(posts.title, ['Draft', 'COBOL']), isNull(posts.meta)))
    .orderBy(posts.title)
    .limit(5);
  assert.deepStrictEqual(some, [{ title: 'COBOL' }, { title: 'Draft' }]);

  const jsonFilter = await db
    .select({ title: posts.title })
    .from(posts)
    .where(dsql`${posts.meta} -> 'tags' ? ${'math'}`);
  assert.deepStrictEqual(jsonFilter, [{ title: 'Notes on the Engine' }]);
});

test('join', async () => {
  const rows = await db
    .select({ author: authors.name, title: posts.title, views: posts.views })
    .from(posts)
    .innerJoin(authors, eq(posts.authorId, authors.id))
    .where(eq(posts.published, true))
    .orderBy(desc(posts.views));
  assert.deepStrictEqual(rows, [
    { author: 'Ada', title: 'Notes on the Engine', views: 100 },
    { author: 'Grace', title: 'COBOL', views: 50 },
  ]);

  const left = await db
    .select({ author: authors.name, posts: count(posts.id) })
    .from(authors)
    .leftJoin(posts, eq(posts.authorId, authors.id))
    .groupBy(authors.name)
    .orderBy(authors.name);
  assert.deepStrictEqual(left, [
    { author: 'Ada', posts: 2 },
    { author: 'Grace', posts: 1 },
    { author: 'Linus', posts: 0 },
  ]);

  const full = await db.select().from(posts).leftJoin(authors, eq(posts.authorId, authors.id)).orderBy(posts.id);
  assert.equal(full.length, 3);
  assert.equal(full[0][AUTHORS].name, 'Ada');
  assert.equal(full[0][POSTS].title, 'Notes on the Engine');
});

test('relational query (db.query ... with)', async () => {
  const result = await db.query.authors.findMany({
    columns: { name: true },
    with: { posts: { columns: { title: true, views: true }, orderBy: (p, { asc }) => [asc(p.title)] } },
    orderBy: (a, { asc }) => [asc(a.name)],
  });
  assert.deepStrictEqual(result, [
    {
      name: 'Ada',
      posts: [
        { title: 'Draft', views: 0 },
        { title: 'Notes on the Engine', views: 100 },
      ],
    },
    { name: 'Grace', posts: [{ title: 'COBOL', views: 50 }] },
    { name: 'Linus', posts: [] },
  ]);
  const one = await db.query.posts.findFirst({ where: (p, { eq }) => eq(p.title, 'COBOL'), with: { author: true } });
  assert.equal(one.author.name, 'Grace');
  assert.ok(one.author.createdAt instanceof Date);
});

test('update ... returning', async () => {
  const updated = await db
    .update(posts)
    .set({ views: dsql`${posts.views} + 1`, published: true })
    .where(eq(posts.title, 'Draft'))
    .returning({ title: posts.title, views: posts.views, published: posts.published });
  assert.deepStrictEqual(updated, [{ title: 'Draft', views: 1, published: true }]);
  const none = await db.update(authors).set({ karma: 0 }).where(eq(authors.name, 'nobody')).returning();
  assert.deepStrictEqual(none, []);
  const res = await db.update(authors).set({ karma: 99 }).where(eq(authors.name, 'Linus'));
  assert.equal(res.rowCount, 1);
  assert.equal(res.command, 'UPDATE');
});

test('delete', async () => {
  const deleted = await db.delete(posts).where(eq(posts.title, 'Draft')).returning({ title: posts.title });
  assert.deepStrictEqual(deleted, [{ title: 'Draft' }]);
  const res = await db.delete(authors).where(eq(authors.name, 'Linus'));
  assert.equal(res.rowCount, 1);
  const left = await db.select({ n: count() }).from(posts);
  assert.deepStrictEqual(left, [{ n: 2 }]);
});

test('db.batch runs several statements in one request', async () => {
  assert.equal(typeof db.batch, 'function', 'this drizzle version supports db.batch for neon-http');
  const [ins, upd, sel, cnt] = await db.batch([
    db.insert(authors).values({ name: 'Barbara', karma: 5, createdAt: created }).returning({ id: authors.id, name: authors.name }),
    db.update(authors).set({ karma: dsql`${authors.karma} * 2` }).where(eq(authors.name, 'Ada')).returning({ karma: authors.karma }),
    db.select({ name: authors.name }).from(authors).orderBy(authors.name),
    db.select({ n: count() }).from(authors),
  ]);
  assert.equal(ins[0].name, 'Barbara');
  assert.deepStrictEqual(upd, [{ karma: 20 }]);
  assert.deepStrictEqual(
    sel.map((r) => r.name),
    ['Ada', 'Barbara', 'Grace'],
  );
  assert.deepStrictEqual(cnt, [{ n: 3 }]);

  // a failing statement rolls back the whole batch
  await assert.rejects(
    db.batch([
      db.insert(authors).values({ name: 'Ghost', createdAt: created }),
      db.insert(posts).values({ authorId: 999999, title: 'orphan' }),
    ]),
    (err) => err?.code === '23503' || err?.cause?.code === '23503',
  );
  const ghosts = await client.query(`SELECT count(*)::int AS n FROM ${AUTHORS} WHERE name = 'Ghost'`);
  assert.equal(ghosts.rows[0].n, 0);
});

test('db.execute with raw sql and $count', async () => {
  const res = await db.execute(dsql`SELECT ${authors.name} AS name, ${1}::int AS one FROM ${authors} ORDER BY ${authors.name} LIMIT 1`);
  assert.deepStrictEqual(res.rows, [{ name: 'Ada', one: 1 }]);
  assert.equal(await db.$count(posts), 2);
  assert.equal(await db.$count(authors, eq(authors.active, true)), 3);
});
