// The wake service never destroys what its store cannot account for, on a private stack (its
// own wake service, data dir and compute port range):
//   - started over computes with an empty (new, or wrong) state store, it refuses to start and
//     deletes nothing;
//   - a state store whose `created` marker is missing (a restored backup) is adopted, not
//     wiped;
//   - told to (--quarantine-unknown-computes), it starts and moves the computes it does not
//     know aside, data intact.
//
// Needs WAKE_BIN and PG_BIN (see README.md); not the main stack's variables.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { needEnv, freePort, listeningPorts, childEnv, Proc, WakeApi, waitHttpReady, reapUnder, sleep } from './stack.js';

const WAKE_BIN = needEnv('WAKE_BIN');
const PG_BIN = needEnv('PG_BIN');
/** Compute ports of this private stack: away from `make up`, `make test` and restart.test.js. */
const COMPUTE_PORTS = [22500, 22699];
const TOKEN = randomBytes(24).toString('hex');

let tmp;
let dataDir;
let wakePort;
let api;
let wake;

function wakeArgs(extra = []) {
  return [
    'serve',
    '--listen', `127.0.0.1:${wakePort}`,
    '--data-dir', dataDir,
    '--compute-ports', COMPUTE_PORTS.join('-'),
    '--compute-fast',
    '--pg-bin', PG_BIN,
    '--default-endpoint', 'db',
    '--default-suspend-timeout-seconds', '-1',
    ...extra,
  ];
}

function newWake(extra) {
  return new Proc('wake-service', WAKE_BIN, wakeArgs(extra), {
    env: childEnv({ WAKE_ADMIN_TOKEN: TOKEN, RUST_BACKTRACE: '0' }),
    log: path.join(tmp, 'wake-service.log'),
  });
}

async function startWake(extra) {
  wake = newWake(extra).start();
  await waitHttpReady(`http://127.0.0.1:${wakePort}/readyz`, wake, 180_000);
}

async function stopWake() {
  const exit = await wake.stop('SIGTERM', 90_000);
  assert.notEqual(exit?.signal, 'SIGKILL', 'the wake service stops on SIGTERM');
}

const computes = () => path.join(dataDir, 'computes');
const listed = async () => (await api.endpoints()).map((e) => e.id).sort();

/** A query on endpoint `id`'s Postgres (database `vault`), straight to its address, as `role`. */
async function direct(id, role, password, text) {
  const ep = await api.expect(200, 'POST', `/v1/endpoints/${id}/wake`);
  const [host, port] = [ep.addresses.direct.slice(0, ep.addresses.direct.lastIndexOf(':')), Number(ep.addresses.direct.split(':').pop())];
  const c = new pg.Client({ host, port, user: role, password, database: 'vault', connectionTimeoutMillis: 20_000 });
  await c.connect();
  try {
    return (await c.query(text)).rows;
  } finally {
    await c.end();
  }
}

before(async () => {
  const busy = [...listeningPorts()].filter((p) => p >= COMPUTE_PORTS[0] && p <= COMPUTE_PORTS[1]);
  assert.deepStrictEqual(busy, [], `ports ${COMPUTE_PORTS.join('-')} must be free for this file's computes`);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdkt-store-'));
  fs.chmodSync(tmp, 0o711);
  dataDir = path.join(tmp, 'data');
  wakePort = await freePort();
  api = new WakeApi(`http://127.0.0.1:${wakePort}`, TOKEN);
});

after(async () => {
  if (wake?.running) await wake.stop('SIGTERM', 90_000);
  if (tmp) {
    const left = await reapUnder(tmp, { pgBin: PG_BIN });
    if (left.length) console.error(`wrong-store.test.js cleanup had to stop: ${left.join(', ')}`);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('an empty or wrong store over existing computes: refused, adopted, or quarantined, never deleted', { timeout: 600_000 }, async (t) => {
  // A stack with data: endpoint db, and endpoint keep with a role and a row.
  await startWake();
  await api.create('keep', { suspend_timeout_seconds: -1 });
  const password = randomBytes(12).toString('base64url');
  await api.createRole('keep', 'keeper', password);
  await api.createDatabase('keep', 'vault', 'keeper');
  await direct('keep', 'keeper', password, `CREATE TABLE precious (note text); INSERT INTO precious VALUES ('still here')`);
  await stopWake();
  const realState = path.join(tmp, 'state.real');

  await t.test('an empty store over existing computes: the start is refused and nothing is touched', async () => {
    fs.renameSync(path.join(dataDir, 'state'), realState);
    try {
      const refused = newWake().start();
      wake = refused;
      const exit = await Promise.race([refused.exited, sleep(180_000).then(() => 'timeout')]);
      if (exit === 'timeout') await refused.stop('SIGTERM', 60_000);
      assert.notEqual(exit, 'timeout', 'the wake service exits instead of serving');
      assert.notEqual(exit.code, 0, 'with a failure status');
      const log = refused.tail(60);
      assert.match(log, /Refusing to start/, 'and says why');
      assert.match(log, /keep/);
      for (const id of ['db', 'keep']) {
        assert.ok(fs.existsSync(path.join(computes(), id, 'pgdata', 'PG_VERSION')), `computes/${id} is intact`);
      }
    } finally {
      fs.rmSync(path.join(dataDir, 'state'), { recursive: true, force: true });
      fs.renameSync(realState, path.join(dataDir, 'state'));
    }
  });

  await t.test("a store whose marker is missing (a restored backup) is adopted, not wiped", async () => {
    fs.rmSync(path.join(dataDir, 'state', 'created'), { force: true });
    await startWake();
    assert.deepEqual(await listed(), ['db', 'keep']);
    assert.deepEqual(await direct('keep', 'keeper', password, 'SELECT note FROM precious'), [{ note: 'still here' }]);
    await stopWake();
  });

  await t.test('told to, it starts over unknown computes and moves them aside, data intact', async () => {
    fs.renameSync(path.join(dataDir, 'state'), realState);
    await startWake(['--quarantine-unknown-computes']);
    assert.deepEqual(await listed(), ['db'], 'a fresh default endpoint only');
    const quarantine = path.join(computes(), '.quarantine');
    const moved = fs.readdirSync(quarantine).sort();
    assert.equal(moved.length, 2, `db and keep are in ${quarantine}: ${moved}`);
    assert.ok(moved.some((name) => name.startsWith('keep')) && moved.some((name) => name.startsWith('db')), String(moved));
    const keep = path.join(quarantine, moved.find((name) => name.startsWith('keep')));
    assert.ok(fs.existsSync(path.join(keep, 'pgdata', 'PG_VERSION')), 'its data directory is intact');
    assert.equal(fs.statSync(quarantine).mode & 0o077, 0, 'the quarantine is private');
    await stopWake();
  });
});
