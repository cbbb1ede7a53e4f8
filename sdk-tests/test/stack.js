// Process management for tests that run their own wake service and gateway (restart.test.js)
// or poke at the main stack's wake service (control-plane.test.js): spawning with logs in a
// temp dir, readiness, /proc inspection (postmasters, PgBouncers, listeners), the wake
// service's REST API and metrics, and a cleanup that leaves no process or file behind.
//
// Deliberately independent of helpers.js, whose import needs the main stack's variables.

import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The value of environment variable `name`; throws when it is unset or empty. */
export function needEnv(name) {
  const value = process.env[name];
  if (value === undefined || value.trim() === '') {
    throw new Error(
      `environment variable ${name} is not set: see sdk-tests/README.md (run the suite via \`make test\`)`,
    );
  }
  return value.trim();
}

/** Poll `check` until it returns something truthy (returned); fail with `what` after `timeoutMs`. */
export async function poll(check, what, { timeoutMs = 30_000, intervalMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      assert.fail(`timed out after ${timeoutMs} ms waiting for: ${what}${last ? ` (last error: ${last.message})` : ''}`);
    }
    await sleep(intervalMs);
  }
}

/** A TCP port nobody listens on right now (the kernel's choice). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Ports in LISTEN state on this machine (IPv4 and IPv6), from /proc/net/tcp{,6}. */
export function listeningPorts() {
  const ports = new Set();
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 4 || cols[3] !== '0A') continue;
      ports.add(parseInt(cols[1].split(':').pop(), 16));
    }
  }
  return ports;
}

/** Resolves true when host:port accepts a TCP connection within `timeoutMs`, false when refused. */
export function accepts(hostPort, timeoutMs = 2000) {
  const i = hostPort.lastIndexOf(':');
  const host = hostPort.slice(0, i).replace(/^\[|\]$/g, '');
  const port = Number(hostPort.slice(i + 1));
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(true)); // no RST: something holds the port
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** The last `lines` lines of a file ('' when it does not exist). */
export function tail(file, lines = 60) {
  try {
    const all = fs.readFileSync(file, 'utf8').split('\n');
    return all.slice(Math.max(0, all.length - lines - 1)).join('\n');
  } catch {
    return '';
  }
}

/** The environment for a spawned wake service or gateway: nothing of ours that it would read. */
export function childEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(GATEWAY_|WAKE_|PG)/.test(k) || k === 'DATA_DIR' || k === 'DATABASE_URL') continue;
    env[k] = v;
  }
  return { RUST_LOG: 'info', ...env, ...extra };
}

/**
 * A long-running child process with stdout and stderr appended to `log`. `exited` resolves
 * with `{ code, signal }` once it is gone.
 */
export class Proc {
  constructor(name, file, args, { env = childEnv(), log }) {
    this.name = name;
    this.file = file;
    this.args = args;
    this.env = env;
    this.log = log;
    this.child = undefined;
  }

  start() {
    assert.ok(!this.running, `${this.name} is already running`);
    fs.appendFileSync(this.log, `\n---- ${new Date().toISOString()} ${this.file} ${this.args.join(' ')}\n`);
    const fd = fs.openSync(this.log, 'a');
    try {
      this.child = spawn(this.file, this.args, { env: this.env, stdio: ['ignore', fd, fd] });
    } finally {
      fs.closeSync(fd);
    }
    const child = this.child;
    this.exit = undefined;
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
      child.once('error', (err) => {
        this.exit = { code: null, signal: null, error: err };
        resolve(this.exit);
      });
    });
    return this;
  }

  get pid() {
    return this.child?.pid;
  }

  get running() {
    return this.child !== undefined && this.exit === undefined;
  }

  /** SIGKILL, and wait until the kernel has reaped it. */
  async kill() {
    if (!this.running) return;
    process.kill(this.child.pid, 'SIGKILL');
    await this.exited;
  }

  /** `signal`, then SIGKILL after `timeoutMs`. Resolves with how it exited. */
  async stop(signal = 'SIGTERM', timeoutMs = 30_000) {
    if (!this.running) return this.exit;
    process.kill(this.child.pid, signal);
    let timer;
    const timeout = new Promise((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs);
    });
    const outcome = await Promise.race([this.exited, timeout]);
    clearTimeout(timer);
    if (outcome === 'timeout') {
      console.error(`${this.name} (pid ${this.child.pid}) ignored ${signal} for ${timeoutMs} ms; killing it`);
      await this.kill();
    }
    return this.exit;
  }

  tail(lines = 60) {
    return `==== last lines of ${this.name} log (${this.log}) ====\n${tail(this.log, lines)}`;
  }
}

/** Poll GET `url` until 200; fail early (with the log) if `proc` exits. */
export async function waitHttpReady(url, proc, timeoutMs = 120_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (proc && !proc.running) {
      assert.fail(`${proc.name} exited (${JSON.stringify(proc.exit)}) before ${url} was ready\n${proc.tail()}`);
    }
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
    } catch {
      // not listening yet, or not serving yet
    }
    if (Date.now() > deadline) {
      assert.fail(`${url} not ready after ${timeoutMs} ms${proc ? '\n' + proc.tail() : ''}`);
    }
    await sleep(100);
  }
}

/** Run a program to completion: `{ code, signal, stdout, stderr }` whatever the exit status. */
export function run(file, args, { env = process.env, timeoutMs = 60_000, input } = {}) {
  return new Promise((resolve, reject) => {
    const child = execFile(file, args, { env, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number' && !err.signal) return reject(err);
      resolve({ code: err ? err.code : 0, signal: err?.signal ?? null, stdout, stderr });
    });
    if (input !== undefined) child.stdin.end(input);
  });
}

// ---------------------------------------------------------------------------
// The wake service's HTTP API
// ---------------------------------------------------------------------------

/**
 * A client for one wake service. `call(method, path, opts)` resolves with
 * `{ status, headers, text, json }`; `json` is undefined when the body is not JSON.
 */
export class WakeApi {
  constructor(baseUrl, token) {
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.token = token;
  }

  /**
   * `body` is sent as JSON; `raw` as is (with `contentType`, default application/json);
   * `token: null` sends no Authorization header.
   */
  async call(method, urlPath, { body, raw, contentType = 'application/json', token = this.token, headers = {}, timeoutMs = 120_000 } = {}) {
    const h = { ...headers };
    if (token !== null) h.authorization = `Bearer ${token}`;
    let payload;
    if (raw !== undefined) {
      payload = raw;
      if (contentType) h['content-type'] = contentType;
    } else if (body !== undefined) {
      payload = JSON.stringify(body);
      h['content-type'] = 'application/json';
    }
    const res = await fetch(this.baseUrl + urlPath, { method, headers: h, body: payload, signal: AbortSignal.timeout(timeoutMs) });
    const text = await res.text();
    let json;
    try {
      json = text === '' ? undefined : JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: res.status, headers: res.headers, text, json };
  }

  /** `call`, asserting the status; the JSON body. */
  async expect(status, method, urlPath, opts) {
    const r = await this.call(method, urlPath, opts);
    assert.equal(r.status, status, `${method} ${urlPath}: expected ${status}, got ${r.status}: ${r.text}`);
    return r.json;
  }

  endpoint(id) {
    return this.call('GET', `/v1/endpoints/${encodeURIComponent(id)}`);
  }

  async endpoints() {
    return this.expect(200, 'GET', '/v1/endpoints');
  }

  /** POST /v1/endpoints, expecting 201. */
  create(id, settings = {}) {
    return this.expect(201, 'POST', '/v1/endpoints', { body: { id, ...settings } });
  }

  createRole(id, name, password) {
    return this.expect(201, 'POST', `/v1/endpoints/${id}/roles`, { body: { name, password } });
  }

  createDatabase(id, name, owner) {
    return this.expect(201, 'POST', `/v1/endpoints/${id}/databases`, { body: { name, owner } });
  }

  /** DELETE, best effort (for cleanup): the status, or the error message. */
  async remove(id) {
    try {
      return (await this.call('DELETE', `/v1/endpoints/${encodeURIComponent(id)}`)).status;
    } catch (err) {
      return err.message;
    }
  }

  /** The Prometheus text of GET /metrics (no token). */
  async metrics() {
    const res = await fetch(this.baseUrl + '/metrics', { signal: AbortSignal.timeout(10_000) });
    assert.equal(res.status, 200, 'GET /metrics of the wake service');
    return res.text();
  }
}

/** Sum of the samples of `name` whose labels include `labels`, from Prometheus text. */
export function promSum(text, name, labels = {}) {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) have[l[1]] = l[2];
    if (!Object.entries(labels).every(([k, v]) => have[k] === v)) continue;
    sum += Number(m[3]);
  }
  return sum;
}

export const WAKE_COMPUTE_ROUTE = '/proxy/api/v1/wake_compute';
export const ACCESS_CONTROL_ROUTE = '/proxy/api/v1/get_endpoint_access_control';

/** How many proxy-API calls (any status) the wake service has answered, from its /metrics. */
export async function controlPlaneCalls(api) {
  const text = await api.metrics();
  return {
    wake_compute: promSum(text, 'wake_http_requests_total', { route: WAKE_COMPUTE_ROUTE }),
    access_control: promSum(text, 'wake_http_requests_total', { route: ACCESS_CONTROL_ROUTE }),
  };
}

// ---------------------------------------------------------------------------
// /proc: which Postgres and PgBouncer processes run, and for which directory
// ---------------------------------------------------------------------------

function readProc(pid) {
  try {
    const args = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((a) => a !== '');
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    let exe = '';
    let cwd = '';
    try {
      exe = fs.readlinkSync(`/proc/${pid}/exe`);
    } catch {
      // a zombie, or gone
    }
    try {
      cwd = fs.readlinkSync(`/proc/${pid}/cwd`);
    } catch {
      // gone
    }
    return { pid, ppid, args, exe, cwd, state: stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] };
  } catch {
    return undefined;
  }
}

/** Every live (non-zombie) process, with pid, ppid, args, exe, cwd. */
export function processes() {
  const out = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const p = readProc(Number(name));
    if (p && p.state !== 'Z') out.push(p);
  }
  return out;
}

/** What program a process runs: 'postgres', 'pgbouncer', 'initdb', 'pg_ctl', or something else. */
export function programOf(p) {
  const exe = path.basename(p.exe.replace(/ \(deleted\)$/, ''));
  if (['postgres', 'pgbouncer', 'initdb', 'pg_ctl'].includes(exe)) return exe;
  const arg0 = p.args[0] ?? '';
  if (arg0.startsWith('postgres:')) return 'postgres';
  return path.basename(arg0.split(' ')[0]);
}

const within = (file, dir) => {
  const rel = path.relative(dir, path.resolve(file));
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
};

/**
 * Postgres, PgBouncer, initdb and pg_ctl processes that belong to `dir`: an argument is a
 * path under it (postgres -D, pgbouncer <ini>), or the working directory is under it
 * (the postmaster and its backends run in the data directory). `where` is the path found.
 */
export function processesUnder(dir, all = processes()) {
  const out = [];
  for (const p of all) {
    const program = programOf(p);
    if (!['postgres', 'pgbouncer', 'initdb', 'pg_ctl'].includes(program)) continue;
    const arg = p.args.slice(1).find((a) => a.startsWith('/') && within(a, dir));
    const where = arg ?? (p.cwd && within(p.cwd, dir) ? p.cwd : undefined);
    if (where) out.push({ ...p, program, where });
  }
  return out;
}

/**
 * The postmasters of data directory `pgdata`: postgres processes working in it whose parent
 * is not a postgres process working in it (that would make them a backend or auxiliary).
 */
export function postmastersOf(pgdata, all = processes()) {
  const real = fs.existsSync(pgdata) ? fs.realpathSync(pgdata) : path.resolve(pgdata);
  const inDir = all.filter((p) => programOf(p) === 'postgres' && (p.cwd === real || p.cwd === path.resolve(pgdata)));
  const pids = new Set(inDir.map((p) => p.pid));
  return inDir.filter((p) => !pids.has(p.ppid));
}

/** Directories under `root` (depth <= `depth`) that hold a file named `file`. */
export function dirsWith(root, file, depth = 3) {
  const out = [];
  const walk = (dir, d) => {
    let entries;
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    if (entries.some((e) => e.isFile() && e.name === file)) out.push(dir);
    if (d === 0) return;
    for (const e of entries) if (e.isDirectory() && !e.isSymbolicLink()) walk(path.join(dir, e.name), d - 1);
  };
  walk(root, depth);
  return out;
}

/** The Postgres data directory (the one with PG_VERSION) of compute dir `computeDir`. */
export function pgdataOf(computeDir) {
  const found = dirsWith(computeDir, 'PG_VERSION', 2).filter((d) => fs.existsSync(path.join(d, 'global')));
  assert.equal(found.length, 1, `one Postgres data directory under ${computeDir}, found ${JSON.stringify(found)}`);
  return found[0];
}

/**
 * Last-resort cleanup of everything a wake service left under `dir`: `pg_ctl stop -m immediate`
 * (as the owner of the data directory when we are root: each compute has its own OS user) for
 * every data directory with a postmaster.pid, SIGKILL for PgBouncers whose pidfile is there,
 * then SIGKILL for whatever still runs there. A compute's files are writable by its OS user, so
 * nothing read there is trusted as root: pidfiles are read without following symlinks and only
 * when they are regular files, and a pid from one is only signalled when the process is a
 * PgBouncer running as the owner of the pidfile's directory (never root). `osUser` is only used
 * for a data directory whose owner has no name. Last, the OS users made for the data
 * directories under `dir` are removed (see below). Returns what it had to stop (empty when the
 * wake service cleaned up after itself).
 */
export async function reapUnder(dir, { pgBin, osUser = 'postgres' } = {}) {
  const stopped = [];
  if (!fs.existsSync(dir)) return stopped;
  const root = process.getuid?.() === 0;
  const names = new Map(
    fs
      .readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .map((line) => line.split(':'))
      .filter((f) => f.length > 2)
      .map((f) => [Number(f[2]), f[0]]),
  );
  const ownerOf = (file) => {
    try {
      return fs.lstatSync(file).uid;
    } catch {
      return undefined;
    }
  };
  const asOwnerOf = (target, file, args) => {
    if (!root) return run(file, args, { timeoutMs: 30_000 });
    const uid = ownerOf(target);
    const user = uid === undefined ? osUser : (names.get(uid) ?? osUser);
    if (uid === 0 || user === 'root') return Promise.resolve({ code: 1 });
    return run('runuser', ['-u', user, '--', file, ...args], { timeoutMs: 30_000 });
  };
  for (const pgdata of dirsWith(dir, 'postmaster.pid', 5)) {
    if (postmastersOf(pgdata).length === 0) continue;
    stopped.push(`postmaster of ${pgdata}`);
    if (pgBin) await asOwnerOf(pgdata, path.join(pgBin, 'pg_ctl'), ['stop', '-D', pgdata, '-m', 'immediate', '-w', '-t', '20']).catch(() => {});
  }
  const pidfiles = [];
  const walk = (d, depth) => {
    let entries;
    try {
      entries = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(d, e.name);
      if (e.isFile() && e.name.endsWith('.pid') && e.name !== 'postmaster.pid') pidfiles.push(p);
      else if (e.isDirectory() && depth > 0) walk(p, depth - 1);
    }
  };
  walk(dir, 5);
  const readPid = (file) => {
    let fd;
    try {
      const { O_RDONLY, O_NOFOLLOW, O_NONBLOCK } = fs.constants;
      fd = fs.openSync(file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
      const st = fs.fstatSync(fd);
      if (!st.isFile() || st.nlink !== 1) return undefined;
      const buf = Buffer.alloc(32);
      const n = fs.readSync(fd, buf, 0, buf.length, 0);
      return Number(buf.subarray(0, n).toString('utf8').split('\n')[0].trim());
    } catch {
      return undefined;
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
  };
  const uidOf = (pid) => {
    try {
      const line = fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('Uid:'));
      return Number(line.split(/\s+/)[1]);
    } catch {
      return undefined;
    }
  };
  for (const file of pidfiles) {
    const pid = readPid(file);
    const p = Number.isInteger(pid) && pid > 0 ? readProc(pid) : undefined;
    const owner = ownerOf(path.dirname(file));
    const trusted = !root || (owner !== undefined && owner !== 0 && uidOf(pid) === owner);
    if (p && programOf(p) === 'pgbouncer' && trusted) {
      stopped.push(`pgbouncer ${pid} (${file})`);
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  for (let i = 0; i < 50; i++) {
    const left = processesUnder(dir);
    if (left.length === 0) break;
    for (const p of left) {
      if (i === 0) stopped.push(`${p.program} ${p.pid} (${p.where})`);
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await sleep(100);
  }
  // The OS users a wake service (run as root) made for the computes and the state store of
  // every data directory under `dir` (depth <= 3): named `w<tag>…`, with the passwd comment
  // `wake-service <tag> …`, `<tag>` being the first 6 hex digits of the SHA-256 of the real
  // path of `<data dir>/computes` (as scripts/lib.sh's remove_compute_users). Their processes
  // are killed, then they are removed: the wake service keeps them while the data exists.
  if (root) {
    const { createHash } = await import('node:crypto');
    const roots = [];
    const walk = (d, depth) => {
      let entries;
      try {
        entries = fs.readdirSync(d, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        if (!e.isDirectory()) continue;
        const p = path.join(d, e.name);
        if (e.name === 'computes') roots.push(p);
        else if (depth > 0) walk(p, depth - 1);
      }
    };
    walk(dir, 3);
    const tags = roots.map((r) => createHash('sha256').update(fs.realpathSync(r)).digest('hex').slice(0, 6));
    const users = fs
      .readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .map((line) => line.split(':'))
      .filter((f) => f.length > 4 && Number(f[2]) !== 0 && tags.some((t) => f[0].startsWith(`w${t}`) && f[4].startsWith(`wake-service ${t} `)));
    for (const [name, , uidText] of users) {
      const uid = Number(uidText);
      for (let i = 0; i < 50; i++) {
        const left = processes().filter((p) => {
          try {
            const line = fs.readFileSync(`/proc/${p.pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('Uid:'));
            return line.split(/\s+/).slice(1, 3).map(Number).includes(uid);
          } catch {
            return false;
          }
        });
        if (left.length === 0) break;
        for (const p of left) {
          try {
            process.kill(p.pid, 'SIGKILL');
          } catch {
            // already gone
          }
        }
        await sleep(100);
      }
      for (let i = 0; i < 20; i++) {
        const r = await run('userdel', [name], { timeoutMs: 30_000 }).catch(() => ({ code: 1 }));
        if (r.code === 0) break;
        await sleep(500);
      }
      if (fs.readFileSync('/etc/group', 'utf8').split('\n').some((l) => l.startsWith(`${name}:`))) {
        await run('groupdel', [name], { timeoutMs: 30_000 }).catch(() => {});
      }
    }
  }
  return stopped;
}

