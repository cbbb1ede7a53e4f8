// Neon's public API (/api/v2) served by the wake service, driven by the real clients from npm:
//   - @neondatabase/api-client with a baseURL: projects, branches (create with parent_id,
//     expires_at, annotations, schema-only; list with pagination; get; reset from parent;
//     delete), endpoints, roles (reveal and reset a password), databases, connection_uri
//     (direct and pooled), operations; every answer checked against the required fields of
//     Neon's OpenAPI document that ships in that package;
//   - the connection strings it hands out work with the driver (HTTP and WebSocket);
//   - Neon's error shape {code, message, request_id} for a bad key, an unknown project or
//     branch, and requests this service refuses (point in time, a reset from elsewhere);
//   - neonctl --api-host: branches create, list, reset, delete, and connection-string;
//   - create-branch-action's calls: a URL made of a branch endpoint's host and the parent's
//     database name reaches the branch (its host is <endpoint>--<branch>).
// neon-testing runs in vitest-neon-testing.test.js.

import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createApiClient } from '@neondatabase/api-client';
import { Pool } from '@neondatabase/serverless';
import YAML from 'yaml';
import { neon, neonConfig, requireEnv, GATEWAY_HOST, GATEWAY_PORT } from './helpers.js';
import { WakeApi, run } from './stack.js';

const WAKE_URL = requireEnv('WAKE_URL').replace(/\/+$/, '');
const TOKEN = requireEnv('WAKE_ADMIN_TOKEN');
const api = new WakeApi(WAKE_URL, TOKEN);
const ROOT = fileURLToPath(new URL('..', import.meta.url));

neonConfig.useSecureWebSocket = false;
neonConfig.wsProxy = (host, port) => `${GATEWAY_HOST}:${GATEWAY_PORT}/v2?address=${host}:${port}`;

const RUN = `${process.pid.toString(36)}${randomBytes(3).toString('hex')}`;
const EP = { id: `napi-${RUN}`, role: 'neondb_owner', password: randomBytes(12).toString('base64url'), db: 'neondb' };
const neonApi = createApiClient({ apiKey: TOKEN, baseURL: `${WAKE_URL}/api/v2` });
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'neon-api-'));
const pools = [];

// ---- Neon's OpenAPI document: the required fields of each response ----

const spec = YAML.parse(fs.readFileSync(path.join(ROOT, 'node_modules/@neondatabase/api-client/public-v2-for-users.gen.yaml'), 'utf8'));

function schemaOf(ref) {
  return spec.components.schemas[ref.replace('#/components/schemas/', '')];
}

/** Every required property of `schema` (through $ref and allOf) present in `value`, recursively. */
function conforms(schema, value, where) {
  if (schema.$ref) return conforms(schemaOf(schema.$ref), value, where);
  if (schema.allOf) return schema.allOf.forEach((s) => conforms(s, value, where));
  if (value === null || value === undefined) return;
  if (schema.type === 'array' && schema.items) {
    assert.ok(Array.isArray(value), `${where}: an array`);
    value.forEach((v, i) => conforms(schema.items, v, `${where}[${i}]`));
    return;
  }
  if (schema.type === 'integer' || schema.type === 'number') assert.equal(typeof value, 'number', `${where}: a number`);
  if (schema.type === 'boolean') assert.equal(typeof value, 'boolean', `${where}: a boolean`);
  if (schema.type === 'string') assert.equal(typeof value, 'string', `${where}: a string`);
  if (schema.enum) assert.ok(schema.enum.includes(value), `${where}: ${value} is one of ${schema.enum}`);
  for (const name of schema.required ?? []) assert.ok(name in value, `${where}: required field '${name}' missing`);
  for (const [name, sub] of Object.entries(schema.properties ?? {})) {
    if (name in value) conforms(sub, value[name], `${where}.${name}`);
  }
}

/** The response schema of `operationId` for `status` (or its first 2xx). */
function responseSchema(operationId, status) {
  for (const item of Object.values(spec.paths)) {
    for (const op of Object.values(item)) {
      if (op?.operationId !== operationId) continue;
      const key = status ? String(status) : Object.keys(op.responses).find((s) => s.startsWith('2'));
      let response = op.responses[key];
      if (response.$ref) response = spec.components.responses[response.$ref.replace('#/components/responses/', '')];
      return response.content['application/json'].schema;
    }
  }
  throw new Error(`no operation ${operationId}`);
}

/** The body of an api-client call, checked against Neon's schema for it. */
async function checked(operationId, call) {
  const res = await call;
  conforms(responseSchema(operationId, res.status), res.data, operationId);
  return res.data;
}

/** The Neon-shaped error a failing api-client call got: `{status, data}`. */
async function neonError(call) {
  try {
    await call;
  } catch (err) {
    assert.ok(err.response, `an HTTP error, not ${err.message}`);
    conforms(schemaOf('#/components/schemas/GeneralError'), err.response.data, 'GeneralError');
    assert.match(err.response.data.request_id, /^[0-9a-f-]{36}$/);
    return { status: err.response.status, data: err.response.data };
  }
  assert.fail('the call should have failed');
}

const mainUri = () => `postgres://${EP.role}:${EP.password}@${EP.id}.localtest.me:${GATEWAY_PORT}/${EP.db}`;
const rows = async (uri) => (await neon(uri)`SELECT title FROM items ORDER BY id`).map((r) => r.title);

before(async () => {
  await api.create(EP.id, { suspend_timeout_seconds: -1 });
  await api.createRole(EP.id, EP.role, EP.password);
  await api.createDatabase(EP.id, EP.db, EP.role);
  const sql = neon(mainUri());
  await sql`CREATE TABLE items (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text NOT NULL)`;
  await sql`INSERT INTO items (title) VALUES ('a'), ('b')`;
});

after(async () => {
  for (const p of pools) await p.end().catch(() => {});
  await api.remove(EP.id);
  fs.rmSync(TMP, { recursive: true, force: true });
});

test('api-client: the project, its default branch, endpoint, roles and databases', async () => {
  const { project } = await checked('getProject', neonApi.getProject(EP.id));
  assert.equal(project.id, EP.id);
  assert.equal(project.pg_version, 15);
  const { projects } = await checked('listProjects', neonApi.listProjects({}));
  assert.ok(projects.some((p) => p.id === EP.id));

  const list = await checked('listProjectBranches', neonApi.listProjectBranches({ projectId: EP.id }));
  assert.equal(list.branches.length, 1);
  const [main] = list.branches;
  assert.equal(main.name, 'main');
  assert.equal(main.default, true);
  assert.deepEqual(list.annotations[main.id].value, {});

  const { endpoints } = await checked('listProjectBranchEndpoints', neonApi.listProjectBranchEndpoints(EP.id, main.id));
  assert.equal(endpoints.length, 1);
  assert.equal(endpoints[0].type, 'read_write');
  assert.equal(endpoints[0].host, `${EP.id}.localtest.me:${GATEWAY_PORT}`);
  await checked('listProjectEndpoints', neonApi.listProjectEndpoints(EP.id));

  const { roles } = await checked('listProjectBranchRoles', neonApi.listProjectBranchRoles(EP.id, main.id));
  assert.deepEqual(roles.map((r) => r.name), [EP.role]);
  const { databases } = await checked('listProjectBranchDatabases', neonApi.listProjectBranchDatabases(EP.id, main.id));
  assert.deepEqual(databases.map((d) => [d.name, d.owner_name]), [[EP.db, EP.role]]);
  await checked('getProjectBranchDatabase', neonApi.getProjectBranchDatabase(EP.id, main.id, EP.db));
  await checked('getProjectBranchRole', neonApi.getProjectBranchRole(EP.id, main.id, EP.role));

  // The password given through /v1 is revealed as it was set.
  const { password } = await checked('getProjectBranchRolePassword', neonApi.getProjectBranchRolePassword(EP.id, main.id, EP.role));
  assert.equal(password, EP.password);
  const { uri } = await checked('getConnectionURI', neonApi.getConnectionUri({ projectId: EP.id, role_name: EP.role, database_name: EP.db }));
  assert.equal(uri, `postgresql://${EP.role}:${EP.password}@${EP.id}.localtest.me:${GATEWAY_PORT}/${EP.db}?sslmode=disable`);
  assert.deepEqual(await rows(uri), ['a', 'b']);
});

test('api-client: a branch with parent_id, expires_at and annotations, used by the driver, reset and deleted', { timeout: 60_000 }, async () => {
  const main = (await neonApi.listProjectBranches({ projectId: EP.id })).data.branches.find((b) => b.default);
  const expires = new Date(Date.now() + 600_000);
  const created = await checked('createProjectBranch', neonApi.createProjectBranch(EP.id, {
    branch: { name: `test/${RUN}`, parent_id: main.id, expires_at: expires.toISOString() },
    endpoints: [{ type: 'read_write' }],
    annotation_value: { 'integration-test': 'true' },
  }));
  const b = created.branch;
  assert.match(b.id, /^br-[a-z0-9]+-[a-z0-9]+-[a-z0-9]+$/, 'an id neonctl takes for an id');
  assert.equal(b.name, `test/${RUN}`);
  assert.equal(b.parent_id, main.id);
  assert.equal(b.default, false);
  assert.ok(Math.abs(new Date(b.expires_at) - expires) < 2000, `${b.expires_at} vs ${expires.toISOString()}`);
  assert.deepEqual(created.roles.map((r) => r.name), [EP.role]);
  // The copy is a database of its own, listed under its parent's name, as on Neon: with the
  // branch's own host, that name reaches the copy (tools build URIs from it).
  assert.deepEqual(created.databases.map((d) => d.name), [EP.db]);
  assert.equal(created.endpoints[0].branch_id, b.id);
  assert.deepEqual(created.operations.map((o) => [o.action, o.status]), [['create_branch', 'finished']]);
  assert.equal(created.connection_uris.length, 1);
  assert.deepEqual(await rows(created.connection_uris[0].connection_uri), ['a', 'b']);

  const got = await checked('getProjectBranch', neonApi.getProjectBranch(EP.id, b.id));
  assert.deepEqual(got.annotation.value, { 'integration-test': 'true' });

  // Pooled and direct URIs, by the name Neon's clients use (the source's) and by its own, on
  // the branch endpoint's host (<endpoint>--<branch>: the gateway takes the branch's database).
  const pooled = (await neonApi.getConnectionUri({ projectId: EP.id, branch_id: b.id, role_name: EP.role, database_name: EP.db, pooled: true })).data.uri;
  assert.equal(pooled, `postgresql://${EP.role}:${EP.password}@${EP.id}--${b.id}-pooler.localtest.me:${GATEWAY_PORT}/${EP.db}?sslmode=disable`);
  assert.equal(created.endpoints[0].id, `${EP.id}--${b.id}`);
  assert.equal(created.endpoints[0].host, `${EP.id}--${b.id}.localtest.me:${GATEWAY_PORT}`);
  const direct = (await neonApi.getConnectionUri({ projectId: EP.id, branch_id: b.id, role_name: EP.role, database_name: b.id })).data.uri;
  await neon(pooled)`INSERT INTO items (title) VALUES ('on the branch')`;
  const pool = new Pool({ connectionString: direct, max: 1 });
  pool.on('error', () => {});
  pools.push(pool);
  assert.deepEqual((await pool.query('SELECT count(*)::int AS n FROM items')).rows, [{ n: 3 }]);
  await pool.end();
  assert.deepEqual(await rows(mainUri()), ['a', 'b'], 'the parent is untouched');

  // Reset from the parent: the branch's own row is gone.
  const reset = await checked('restoreProjectBranch', neonApi.restoreProjectBranch(EP.id, b.id, { source_branch_id: main.id }));
  assert.ok(reset.branch.last_reset_at, 'last_reset_at is set');
  assert.deepEqual(await rows(pooled), ['a', 'b']);

  // A schema-only branch of the branch: no rows; connection_uri still takes 'neondb'.
  const child = await checked('createProjectBranch', neonApi.createProjectBranch(EP.id, { branch: { parent_id: b.id, init_source: 'schema-only' } }));
  assert.equal(child.branch.parent_id, b.id);
  assert.deepEqual(child.databases.map((d) => d.name), [EP.db]);
  const childUri = (await neonApi.getConnectionUri({ projectId: EP.id, branch_id: child.branch.id, role_name: EP.role, database_name: EP.db })).data.uri;
  assert.deepEqual(await rows(childUri), []);

  // Pagination as neonctl walks it.
  const page1 = await checked('listProjectBranches', neonApi.listProjectBranches({ projectId: EP.id, limit: 2, sort_by: 'created_at', sort_order: 'asc' }));
  assert.deepEqual(page1.branches.map((x) => x.id), [main.id, b.id]);
  assert.ok(page1.pagination.next, 'a next cursor');
  const page2 = await checked('listProjectBranches', neonApi.listProjectBranches({ projectId: EP.id, limit: 2, sort_by: 'created_at', sort_order: 'asc', cursor: page1.pagination.next }));
  assert.deepEqual(page2.branches.map((x) => x.id), [child.branch.id]);
  assert.equal(page2.pagination.next, undefined);

  // Operations: each change recorded, finished.
  const ops = await checked('listProjectOperations', neonApi.listProjectOperations({ projectId: EP.id }));
  assert.deepEqual(ops.operations.map((o) => o.action).slice(0, 3), ['create_branch', 'create_timeline', 'create_branch']);
  assert.ok(ops.operations.every((o) => o.status === 'finished'));
  const op = await checked('getProjectOperation', neonApi.getProjectOperation(EP.id, created.operations[0].id));
  assert.equal(op.operation.branch_id, b.id);

  for (const id of [child.branch.id, b.id]) {
    const deleted = await checked('deleteProjectBranch', neonApi.deleteProjectBranch({ projectId: EP.id, branchId: id }));
    assert.equal(deleted.branch.id, id);
  }
  const gone = await neonError(neonApi.getProjectBranch(EP.id, b.id));
  assert.equal(gone.status, 404);
  assert.equal((await neonApi.listProjectBranches({ projectId: EP.id })).data.branches.length, 1);
});

test('create-branch-action\'s calls: a URL built from the branch endpoint\'s host and the parent\'s database name reaches the branch', { timeout: 60_000 }, async () => {
  // What neondatabase/create-branch-action (src/branch.ts) does through api-client with its
  // api_host (a GitHub Action: it cannot run here, its calls can): find the branch by name,
  // create it with a read_write endpoint, then build the URLs from the endpoint's host, the
  // `database` input (the parent's name) and the revealed password.
  const name = `preview/${RUN}`;
  const byName = async () => (await neonApi.listProjectBranches({ projectId: EP.id, search: name, limit: 10000 }))
    .data.branches.find((b) => b.name === name || b.id === name);
  assert.equal(await byName(), undefined);
  const created = await checked('createProjectBranch', neonApi.createProjectBranch(EP.id, {
    endpoints: [{ type: 'read_write', suspend_timeout_seconds: 0 }],
    branch: { name, parent_id: undefined, init_source: undefined, expires_at: undefined },
    annotation_value: { 'github-repo': 'example/app' },
  }));
  const branchId = created.branch.id;
  const [endpoint] = (await checked('listProjectBranchEndpoints', neonApi.listProjectBranchEndpoints(EP.id, branchId))).endpoints;
  await checked('getProjectBranchDatabase', neonApi.getProjectBranchDatabase(EP.id, branchId, EP.db));
  await checked('getProjectBranchRole', neonApi.getProjectBranchRole(EP.id, branchId, EP.role));
  const { password } = await checked('getProjectBranchRolePassword', neonApi.getProjectBranchRolePassword(EP.id, branchId, EP.role));
  const url = (host) => {
    const u = new URL(`postgresql://${host}`);
    u.pathname = EP.db;
    u.username = EP.role;
    u.password = password;
    return u.toString();
  };
  const direct = url(endpoint.host);
  const pooled = url(endpoint.host.replace(endpoint.id, `${endpoint.id}-pooler`));
  assert.equal(pooled, `postgresql://${EP.role}:${password}@${EP.id}--${branchId}-pooler.localtest.me:${GATEWAY_PORT}/${EP.db}`);

  // Over HTTP (direct and pooled) and WebSocket, the session is in the branch's database.
  await neon(direct)`INSERT INTO items (title) VALUES ('preview')`;
  assert.deepEqual(await rows(pooled), ['a', 'b', 'preview']);
  const pool = new Pool({ connectionString: direct, max: 1 });
  pool.on('error', () => {});
  pools.push(pool);
  assert.deepEqual((await pool.query('SELECT current_database() AS db, count(*)::int AS n FROM items')).rows, [{ db: branchId, n: 3 }]);
  await pool.end();
  assert.deepEqual(await rows(mainUri()), ['a', 'b'], 'the parent is untouched');
  // The action's second run finds the branch by name instead of making another.
  assert.equal((await byName()).id, branchId);
  await checked('deleteProjectBranch', neonApi.deleteProjectBranch({ projectId: EP.id, branchId }));
  // The branch's host names a database that is gone: Postgres says so.
  const gone = await neon(direct)`SELECT 1`.then(() => null, (e) => e);
  assert.match(gone?.message ?? '', /does not exist/);
});

test('a branch host reaches only its own endpoint: credentials never cross to another endpoint, reserved names are refused', { timeout: 60_000 }, async () => {
  const other = { id: `napi2-${RUN}`, role: 'other_owner', password: randomBytes(12).toString('base64url'), db: 'otherdb' };
  await api.create(other.id, { suspend_timeout_seconds: -1 });
  try {
    await api.createRole(other.id, other.role, other.password);
    await api.createDatabase(other.id, other.db, other.role);
    const failure = (uri) => neon(uri)`SELECT current_database() AS db`.then((rows) => assert.fail(`reached ${JSON.stringify(rows)}`), (e) => e.message);
    const host = (endpoint, db) => `${endpoint}--${db}.localtest.me:${GATEWAY_PORT}`;
    // This endpoint's credentials on a host naming the other endpoint and its database.
    assert.match(await failure(`postgres://${EP.role}:${EP.password}@${host(other.id, other.db)}/${EP.db}`), /password authentication failed/);
    // The other endpoint's credentials on this endpoint's host, naming the other's database.
    assert.match(await failure(`postgres://${other.role}:${other.password}@${host(EP.id, other.db)}/${other.db}`), /password authentication failed/);
    // This endpoint's role, the other's database name: not a database of this endpoint.
    assert.match(await failure(`postgres://${EP.role}:${EP.password}@${host(EP.id, other.db)}/${EP.db}`), /does not exist/);
    // Over WebSocket the same: the other endpoint's host refuses this endpoint's role.
    const pool = new Pool({ connectionString: `postgres://${EP.role}:${EP.password}@${host(other.id, other.db)}/${EP.db}`, max: 1 });
    pool.on('error', () => {});
    pools.push(pool);
    const ws = await pool.query('SELECT 1').then(() => null, (e) => e.message);
    assert.match(ws ?? '', /password authentication failed/);
    await pool.end().catch(() => {});
    // Names the computes keep for themselves are no database a host can choose.
    for (const reserved of ['template1', 'pg_catalog', 'cloud_admin']) {
      assert.match(await failure(`postgres://${EP.role}:${EP.password}@${host(EP.id, reserved)}/${EP.db}`), /invalid endpoint id/);
    }
    // The other endpoint is untouched, and still reached with its own credentials.
    assert.deepEqual(await neon(`postgres://${other.role}:${other.password}@${host(other.id, other.db)}/whatever`)`SELECT current_database() AS db`, [{ db: other.db }]);
  } finally {
    await api.remove(other.id);
  }
});

test('api-client: roles created and reset through the API get generated passwords that work', async () => {
  const main = (await neonApi.listProjectBranches({ projectId: EP.id })).data.branches.find((b) => b.default);
  const made = await checked('createProjectBranchRole', neonApi.createProjectBranchRole(EP.id, main.id, { role: { name: `app_${RUN}` } }));
  assert.match(made.role.password, /^npg_[A-Za-z0-9]{24}$/);
  const revealed = (await neonApi.getProjectBranchRolePassword(EP.id, main.id, `app_${RUN}`)).data.password;
  assert.equal(revealed, made.role.password);

  const before = (await neonApi.getConnectionUri({ projectId: EP.id, role_name: `app_${RUN}`, database_name: EP.db })).data.uri;
  assert.deepEqual(await neon(before)`SELECT current_user AS u`, [{ u: `app_${RUN}` }]);
  const reset = await checked('resetProjectBranchRolePassword', neonApi.resetProjectBranchRolePassword(EP.id, main.id, `app_${RUN}`));
  assert.notEqual(reset.role.password, made.role.password);
  const afterUri = (await neonApi.getConnectionUri({ projectId: EP.id, role_name: `app_${RUN}`, database_name: EP.db })).data.uri;
  assert.ok(afterUri.includes(reset.role.password));
  assert.deepEqual(await neon(afterUri)`SELECT 1 AS one`, [{ one: 1 }]);
  const old = await neon(before)`SELECT 1`.then(() => null, (e) => e);
  assert.ok(old, 'the old password no longer logs in');

  const db = await checked('createProjectBranchDatabase', neonApi.createProjectBranchDatabase(EP.id, main.id, { database: { name: `extra_${RUN}`, owner_name: `app_${RUN}` } }));
  assert.equal(db.database.owner_name, `app_${RUN}`);
});

test('api-client: Neon\'s error shape, and what is refused', async () => {
  const main = (await neonApi.listProjectBranches({ projectId: EP.id })).data.branches.find((b) => b.default);
  const wrongKey = createApiClient({ apiKey: 'not-the-admin-token', baseURL: `${WAKE_URL}/api/v2` });
  assert.equal((await neonError(wrongKey.getProject(EP.id))).status, 401);
  assert.equal((await neonError(neonApi.getProject(`nope-${RUN}`))).status, 404);
  assert.equal((await neonError(neonApi.getProjectBranch(EP.id, 'br-no-such-branch'))).status, 404);
  const past = await neonError(neonApi.createProjectBranch(EP.id, { branch: { expires_at: new Date(Date.now() - 1000).toISOString() } }));
  assert.equal(past.status, 400);
  const pitr = await neonError(neonApi.createProjectBranch(EP.id, { branch: { parent_timestamp: new Date().toISOString() } }));
  assert.equal(pitr.status, 400);
  assert.match(pitr.data.message, /point in time/);
  assert.equal((await neonError(neonApi.deleteProjectBranch({ projectId: EP.id, branchId: main.id }))).status, 400, 'the default branch stays');
  const wrongDb = await neonError(neonApi.getConnectionUri({ projectId: EP.id, role_name: EP.role, database_name: 'nope' }));
  assert.equal(wrongDb.status, 404);
  const raw = await api.call('POST', `/api/v2/projects/${EP.id}/branches`, { raw: '{"branch":', contentType: 'application/json' });
  assert.equal(raw.status, 400);
  assert.deepEqual(Object.keys(raw.json).sort(), ['code', 'message', 'request_id']);
  const unknown = await api.call('GET', '/api/v2/no/such/route');
  assert.equal(unknown.status, 404);
  assert.ok(unknown.json.request_id);
  assert.equal((await neonApi.listProjectBranches({ projectId: EP.id })).data.branches.length, 1, 'nothing half-created');
});

// ---- neonctl ----

async function neonctl(...args) {
  const bin = path.join(ROOT, 'node_modules', '.bin', 'neonctl');
  const r = await run(bin, [...args, '--api-host', `${WAKE_URL}/api/v2`, '--api-key', TOKEN, '--project-id', EP.id,
    '--no-analytics', '--config-dir', path.join(TMP, 'config'), '--context-file', path.join(TMP, '.neon')], {
    timeoutMs: 60_000,
    env: { ...process.env, HOME: TMP, NO_PROXY: '127.0.0.1,localhost', CI: '1' },
  });
  assert.equal(r.code, 0, `neonctl ${args.join(' ')}: exit ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r.stdout.trim();
}

test('neonctl --api-host: branches create, list, connection-string, reset, delete', { timeout: 120_000 }, async () => {
  const created = JSON.parse(await neonctl('branches', 'create', '--name', `ci-${RUN}`, '--output', 'json'));
  const id = created.branch.id;
  assert.equal(created.branch.name, `ci-${RUN}`);
  const listed = JSON.parse(await neonctl('branches', 'list', '--output', 'json'));
  assert.deepEqual(listed.map((b) => b.name).sort(), [`ci-${RUN}`, 'main']);

  const uri = await neonctl('connection-string', `ci-${RUN}`, '--role-name', EP.role, '--ssl', 'omit');
  // As on Neon: the branch's host, and its parent's database name.
  assert.equal(uri, `postgresql://${EP.role}:${EP.password}@${EP.id}--${id}.localtest.me:${GATEWAY_PORT}/${EP.db}`);
  const pooled = await neonctl('connection-string', `ci-${RUN}`, '--role-name', EP.role, '--pooled', '--ssl', 'omit', '--database-name', EP.db);
  assert.equal(pooled, `postgresql://${EP.role}:${EP.password}@${EP.id}--${id}-pooler.localtest.me:${GATEWAY_PORT}/${EP.db}`);
  await neon(uri)`INSERT INTO items (title) VALUES ('neonctl')`;
  assert.deepEqual(await rows(pooled), ['a', 'b', 'neonctl']);
  assert.deepEqual(await rows(mainUri()), ['a', 'b']);

  await neonctl('branches', 'reset', `ci-${RUN}`, '--parent', '--output', 'json');
  assert.deepEqual(await rows(uri), ['a', 'b']);

  await neonctl('branches', 'delete', `ci-${RUN}`, '--output', 'json');
  const left = JSON.parse(await neonctl('branches', 'list', '--output', 'json'));
  assert.deepEqual(left.map((b) => b.name), ['main']);
});
