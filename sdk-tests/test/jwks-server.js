// A JWKS server for the JWT tests (issue 15), plus the signing helpers that go with it.
//
// One node:http server on 127.0.0.1, port 0 (the kernel's choice), serving any number of
// independent key *sets*, each at `/<name>/jwks.json` (so every JWKS rule of a test can have
// its own keys, failure mode and request count), and an "attacker" set at
// `/attacker/jwks.json` and `/attacker/x5u.pem` that the gateway must never fetch (tokens point
// `jku` / `x5u` at it). Every request is counted per path and timestamped.
//
// Keys are made with node:crypto: RS256/RS384/RS512/PS256 (RSA 2048), ES256 (P-256), ES384
// (P-384), EdDSA (Ed25519). Public JWKs come from `key.export({ format: 'jwk' })` plus `kid`,
// `alg` and `use: "sig"`. Signatures: RSASSA-PKCS1-v1_5 / PSS with SHA-2, ECDSA in raw r‖s
// (`dsaEncoding: 'ieee-p1363'`, as JWS wants), Ed25519 via `crypto.sign(null, …)`.
//
// Deliberately independent of helpers.js (whose import needs the main stack's variables), so
// `jwks-server.test.js` runs on its own with plain `node --test`.

import http from 'node:http';
import crypto from 'node:crypto';

// ---------------------------------------------------------------------------
// base64url and compact JWS building blocks (also for malformed tokens)
// ---------------------------------------------------------------------------

/** base64url without padding of a Buffer, a string (UTF-8) or a JSON value (objects, arrays). */
export function b64u(value) {
  let buf;
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) buf = Buffer.from(value);
  else if (typeof value === 'string') buf = Buffer.from(value, 'utf8');
  else buf = Buffer.from(JSON.stringify(value), 'utf8');
  return buf.toString('base64url');
}

/** Decode one base64url segment to a Buffer. */
export function unb64u(segment) {
  return Buffer.from(segment, 'base64url');
}

/**
 * A compact JWS from raw parts: `header` and `payload` are objects (JSON-encoded), strings
 * (used as the JSON text, so duplicate keys or non-objects are possible) or `{ raw: '<segment>' }`
 * (used verbatim, already encoded); `signature` a Buffer (encoded) or `{ raw: '<segment>' }`.
 */
export function compact(header, payload, signature = Buffer.alloc(0)) {
  const seg = (part) => (part && typeof part === 'object' && 'raw' in part ? part.raw : b64u(part));
  return `${seg(header)}.${seg(payload)}.${seg(signature)}`;
}

/** The signing input (`<header>.<payload>`) of a compact token. */
export function signingInput(token) {
  return token.slice(0, token.lastIndexOf('.'));
}

/** Decode a compact token's header and payload (JSON) and signature bytes. */
export function decode(token) {
  const [h, p, s] = token.split('.');
  return { header: JSON.parse(unb64u(h).toString('utf8')), payload: JSON.parse(unb64u(p).toString('utf8')), signature: unb64u(s ?? '') };
}

const HASH = { RS256: 'sha256', RS384: 'sha384', RS512: 'sha512', PS256: 'sha256', PS384: 'sha384', PS512: 'sha512', ES256: 'sha256', ES384: 'sha384' };

/** The signature over `data` for JWS algorithm `alg` with private KeyObject `privateKey`. */
export function rawSign(alg, privateKey, data) {
  const input = Buffer.from(data);
  if (alg === 'EdDSA') return crypto.sign(null, input, privateKey);
  if (alg.startsWith('RS')) return crypto.sign(HASH[alg], input, privateKey);
  if (alg.startsWith('PS')) {
    return crypto.sign(HASH[alg], input, { key: privateKey, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: Number(alg.slice(2)) / 8 });
  }
  if (alg.startsWith('ES')) return crypto.sign(HASH[alg], input, { key: privateKey, dsaEncoding: 'ieee-p1363' });
  if (alg.startsWith('HS')) return crypto.createHmac(`sha${alg.slice(2)}`, privateKey).update(input).digest();
  throw new Error(`rawSign: unsupported alg ${alg}`);
}

/** Verify a JWS signature (the inverse of rawSign) with a public KeyObject or an HMAC secret. */
export function rawVerify(alg, publicKey, data, signature) {
  const input = Buffer.from(data);
  if (alg === 'EdDSA') return crypto.verify(null, input, publicKey, signature);
  if (alg.startsWith('RS')) return crypto.verify(HASH[alg], input, publicKey, signature);
  if (alg.startsWith('PS')) {
    return crypto.verify(HASH[alg], input, { key: publicKey, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: Number(alg.slice(2)) / 8 }, signature);
  }
  if (alg.startsWith('ES')) return crypto.verify(HASH[alg], input, { key: publicKey, dsaEncoding: 'ieee-p1363' }, signature);
  if (alg.startsWith('HS')) {
    const expected = crypto.createHmac(`sha${alg.slice(2)}`, publicKey).update(input).digest();
    return expected.length === signature.length && crypto.timingSafeEqual(expected, signature);
  }
  throw new Error(`rawVerify: unsupported alg ${alg}`);
}

/** A key pair for JWS algorithm `alg`: `{ privateKey, publicKey }` KeyObjects. */
export function generateKeyPair(alg) {
  if (alg === 'EdDSA') return crypto.generateKeyPairSync('ed25519');
  if (alg.startsWith('RS') || alg.startsWith('PS')) return crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  if (alg === 'ES256') return crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  if (alg === 'ES384') return crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' });
  throw new Error(`generateKeyPair: unsupported alg ${alg}`);
}

/** The public JWK of a KeyObject, with `kid`, `alg` and `use: "sig"` (only the public members). */
export function publicJwk(publicKey, { kid, alg, use = 'sig', extra = {} } = {}) {
  const jwk = publicKey.export({ format: 'jwk' });
  delete jwk.d;
  return { ...jwk, ...(kid === undefined ? {} : { kid }), ...(alg === undefined ? {} : { alg }), ...(use === undefined ? {} : { use }), ...extra };
}

/** Current time in whole seconds since the epoch. */
export const nowSeconds = () => Math.floor(Date.now() / 1000);

/**
 * A compact JWS: header `{ alg, typ: "JWT", kid }` merged with `header` (a property set to
 * `undefined` there is removed, e.g. `{ kid: undefined }`), payload as given, signed with
 * `privateKey` for `signAlg` (default `alg`; they differ for confusion attacks).
 */
export function signJws({ alg, kid, payload, header = {}, privateKey, signAlg = alg }) {
  const h = { alg, typ: 'JWT', ...(kid === undefined ? {} : { kid }), ...header };
  for (const k of Object.keys(h)) if (h[k] === undefined) delete h[k];
  const input = `${b64u(h)}.${b64u(payload)}`;
  return `${input}.${b64u(rawSign(signAlg, privateKey, input))}`;
}

// ---------------------------------------------------------------------------
// Key sets
// ---------------------------------------------------------------------------

let kidCounter = 0;

/** One JWKS: the keys it signs with (all of them) and the ones it publishes (`served`). */
export class KeySet {
  constructor(server, name) {
    this.server = server;
    this.name = name;
    this.path = `/${name}/jwks.json`;
    /** kid -> { kid, alg, privateKey, publicKey, jwk } for every key ever made here. */
    this.keys = new Map();
    /** The kids published at `path`, in order (duplicates allowed: see addKey's `kid`). */
    this.served = [];
    /** Extra raw JWK objects appended to the published set (e.g. a bad key next to good ones). */
    this.extraJwks = [];
    /** 'ok' | '500' (HTTP 500 with an HTML body) | 'down' (the socket is destroyed) | 'hang' (no answer). */
    this.mode = 'ok';
    /** `alg` -> the kid of the current (newest served) key for that alg. */
    this.current = new Map();
  }

  /** The URL of this set's JWKS. */
  get url() {
    return `${this.server.baseUrl}${this.path}`;
  }

  /**
   * Make a key for `alg` and publish it (unless `publish: false`). `kid` defaults to
   * `<set>-<alg>-<n>`; passing an existing kid makes a *different* key under the same kid
   * (duplicate kids): the newest key is then what `sign({ kid })` uses unless `key` is given.
   * Returns the key record.
   */
  addKey(alg, { kid, publish = true, jwkAlg = alg, use = 'sig' } = {}) {
    kidCounter += 1;
    const k = kid ?? `${this.name}-${alg.toLowerCase()}-${kidCounter}`;
    const { privateKey, publicKey } = generateKeyPair(alg);
    const record = { kid: k, alg, privateKey, publicKey, jwk: publicJwk(publicKey, { kid: k, alg: jwkAlg, use }) };
    if (this.keys.has(k)) {
      const prev = this.keys.get(k);
      record.duplicates = [...(prev.duplicates ?? [prev]), record];
    }
    this.keys.set(k, record);
    if (publish) {
      this.served.push({ kid: k, record });
      this.current.set(alg, k);
    }
    return record;
  }

  /** The published JWKS document. */
  document() {
    return { keys: [...this.served.map((s) => s.record.jwk), ...this.extraJwks] };
  }

  /** Stop publishing `kid` (every key under it). */
  unpublish(kid) {
    this.served = this.served.filter((s) => s.kid !== kid);
    for (const [alg, k] of this.current) if (k === kid) this.current.delete(alg);
  }

  /**
   * Rotation: a new key for `alg` replaces the current one in the published set (the old key
   * is no longer served but can still sign, to test that it is refused after a refresh).
   * Returns `{ oldKid, newKid }`.
   */
  rotate(alg) {
    const oldKid = this.current.get(alg);
    const fresh = this.addKey(alg, { publish: false });
    if (oldKid !== undefined) this.unpublish(oldKid);
    this.served.push({ kid: fresh.kid, record: fresh });
    this.current.set(alg, fresh.kid);
    return { oldKid, newKid: fresh.kid };
  }

  /** The current kid for `alg`. */
  kid(alg) {
    const k = this.current.get(alg);
    if (k === undefined) throw new Error(`key set ${this.name} has no current ${alg} key`);
    return k;
  }

  /**
   * A compact JWS signed by this set: `alg` (default RS256), `kid` (default the current key
   * for `alg`; any kid made here, even unpublished; a kid never made here is signed with the
   * current key for `alg`, for unknown-kid cases), `payload`, `header` overrides, `key` (a
   * record from addKey, to pick one of several keys under a duplicate kid).
   */
  sign({ alg = 'RS256', kid, payload, header = {}, key } = {}) {
    const k = kid ?? this.kid(alg);
    const record = key ?? this.keys.get(k) ?? this.keys.get(this.current.get(alg));
    if (!record) throw new Error(`key set ${this.name} has no key ${k}`);
    return signJws({ alg, kid: k, payload, header, privateKey: record.privateKey });
  }

  /**
   * A normal token for user `sub`: `{ sub, iat: now, exp: now + ttl, ...claims }`, signed with
   * the current key for `alg`.
   */
  token(sub, { alg = 'RS256', ttl = 600, claims = {}, header = {}, kid, key } = {}) {
    const now = nowSeconds();
    const payload = { sub, iat: now, exp: now + ttl, ...claims };
    for (const k of Object.keys(payload)) if (payload[k] === undefined) delete payload[k];
    return this.sign({ alg, kid, payload, header, key });
  }

  /** How many requests reached this set's path. */
  get requests() {
    return this.server.count(this.path);
  }

  /** When the last request reached this set's path (ms since the epoch), or undefined. */
  get lastRequestAt() {
    const times = this.server.times.get(this.path);
    return times && times.length ? times[times.length - 1] : undefined;
  }
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

export class JwksServer {
  constructor() {
    this.server = http.createServer((req, res) => this.handle(req, res));
    /** path -> number of requests (any method, any outcome). */
    this.counts = new Map();
    /** path -> request times (ms since the epoch). */
    this.times = new Map();
    /** name -> KeySet. */
    this.sets = new Map();
    this.sockets = new Set();
    this.hung = new Set();
    this.server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
    // The attacker's key: tokens name it with jku / x5u / an embedded jwk.
    this.attacker = new KeySet(this, 'attacker');
    this.attacker.addKey('RS256', { kid: 'attacker-rs256' });
    this.sets.set('attacker', this.attacker);
  }

  /** Listen on 127.0.0.1 and a free port. Resolves to `this`. */
  async start() {
    await new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.port = this.server.address().port;
    this.baseUrl = `http://127.0.0.1:${this.port}`;
    return this;
  }

  /** Close the server and every open connection (hung requests included). */
  async stop() {
    for (const res of this.hung) res.destroy();
    this.hung.clear();
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server.close(() => resolve()));
  }

  /** A new key set `name` at `/<name>/jwks.json`, with one key per alg in `algs` (published). */
  addSet(name, algs = ['RS256', 'ES256', 'EdDSA']) {
    if (this.sets.has(name)) throw new Error(`key set ${name} exists`);
    if (!/^[a-z0-9_-]+$/.test(name)) throw new Error(`key set name ${name}: use [a-z0-9_-]`);
    const set = new KeySet(this, name);
    for (const alg of algs) set.addKey(alg);
    this.sets.set(name, set);
    return set;
  }

  /** Requests seen at `path` (exact path, query string excluded). */
  count(path) {
    return this.counts.get(path) ?? 0;
  }

  /** Requests seen at any path under `/attacker/`. */
  get attackerRequests() {
    let n = 0;
    for (const [p, c] of this.counts) if (p.startsWith('/attacker/')) n += c;
    return n;
  }

  /** The attacker's JWKS URL (for `jku`) and certificate URL (for `x5u`). */
  get attackerJku() {
    return `${this.baseUrl}/attacker/jwks.json`;
  }

  get attackerX5u() {
    return `${this.baseUrl}/attacker/x5u.pem`;
  }

  handle(req, res) {
    const path = new URL(req.url, 'http://x').pathname;
    this.counts.set(path, (this.counts.get(path) ?? 0) + 1);
    if (!this.times.has(path)) this.times.set(path, []);
    this.times.get(path).push(Date.now());
    if (path === '/attacker/x5u.pem') {
      const pem = this.attacker.keys.get('attacker-rs256').publicKey.export({ type: 'spki', format: 'pem' });
      res.writeHead(200, { 'content-type': 'application/x-pem-file' }).end(pem);
      return;
    }
    const m = /^\/([a-z0-9_-]+)\/jwks\.json$/.exec(path);
    const set = m ? this.sets.get(m[1]) : undefined;
    if (!set || req.method !== 'GET') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    switch (set.mode) {
      case 'down':
        req.socket.destroy();
        return;
      case 'hang':
        this.hung.add(res);
        res.on('close', () => this.hung.delete(res));
        return;
      case '500':
        res.writeHead(500, { 'content-type': 'text/html' }).end('<html><body>Internal Server Error</body></html>');
        return;
      default: {
        const body = JSON.stringify(set.document());
        res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(body);
      }
    }
  }
}

/** Start a JwksServer on 127.0.0.1 and a free port. */
export function startJwksServer() {
  return new JwksServer().start();
}

// ---------------------------------------------------------------------------
// Attack tokens (the corpus of jwt-on-stock-postgres.md section 5)
// ---------------------------------------------------------------------------

/**
 * The corpus of malformed and forged tokens against key set `set` (its current RS256, ES256
 * and EdDSA keys must exist), for user `sub`. Each entry: `{ name, token }`. Every one must be
 * rejected by a correct validator. `server` gives the attacker URLs.
 */
export function attackCorpus(server, set, sub = 'mallory') {
  const now = nowSeconds();
  const good = { sub, iat: now, exp: now + 600 };
  const rsKid = set.kid('RS256');
  const rs = set.keys.get(rsKid);
  const out = [];
  const add = (name, token) => out.push({ name, token });

  // alg none, in its spellings, with and without a signature
  for (const alg of ['none', 'None', 'NONE', 'nOnE']) {
    add(`alg ${alg}, empty signature`, compact({ alg, typ: 'JWT', kid: rsKid }, good));
    add(`alg ${alg}, with an RS256 signature`, `${b64u({ alg, typ: 'JWT', kid: rsKid })}.${b64u(good)}.${b64u(rawSign('RS256', rs.privateKey, `${b64u({ alg, typ: 'JWT', kid: rsKid })}.${b64u(good)}`))}`);
  }
  add('alg missing', signJws({ alg: 'RS256', kid: rsKid, payload: good, header: { alg: undefined }, privateKey: rs.privateKey, signAlg: 'RS256' }));
  add('alg unknown (XX999)', signJws({ alg: 'XX999', kid: rsKid, payload: good, privateKey: rs.privateKey, signAlg: 'RS256' }));
  add('alg "RS256 " (trailing space)', signJws({ alg: 'RS256 ', kid: rsKid, payload: good, privateKey: rs.privateKey, signAlg: 'RS256' }));

  // HS256 with the RSA public key as the HMAC secret (PEM, DER, JWK JSON, raw modulus)
  const spkiPem = rs.publicKey.export({ type: 'spki', format: 'pem' });
  const pkcs1Pem = rs.publicKey.export({ type: 'pkcs1', format: 'pem' });
  const spkiDer = rs.publicKey.export({ type: 'spki', format: 'der' });
  for (const [what, secret] of [
    ['SPKI PEM', spkiPem],
    ['PKCS#1 PEM', pkcs1Pem],
    ['SPKI DER', spkiDer],
    ['JWK JSON', JSON.stringify(rs.jwk)],
    ['raw modulus n', unb64u(rs.jwk.n)],
  ]) {
    add(`HS256 signed with the RSA public key (${what})`, signJws({ alg: 'HS256', kid: rsKid, payload: good, privateKey: secret, signAlg: 'HS256' }));
  }
  const ecKid = set.kid('ES256');
  add('HS256 signed with the EC public key (SPKI PEM)', signJws({ alg: 'HS256', kid: ecKid, payload: good, privateKey: set.keys.get(ecKid).publicKey.export({ type: 'spki', format: 'pem' }), signAlg: 'HS256' }));
  // alg / key type mismatch: ES256 header naming the RSA kid, RS256 header naming the EC kid
  add('ES256 header, kid of an RSA key', signJws({ alg: 'ES256', kid: rsKid, payload: good, privateKey: set.keys.get(ecKid).privateKey, signAlg: 'ES256' }));
  add('RS256 header, kid of an EC key', signJws({ alg: 'RS256', kid: ecKid, payload: good, privateKey: rs.privateKey, signAlg: 'RS256' }));
  add('ES256 with a DER signature', (() => {
    const input = `${b64u({ alg: 'ES256', typ: 'JWT', kid: ecKid })}.${b64u(good)}`;
    return `${input}.${b64u(crypto.sign('sha256', Buffer.from(input), { key: set.keys.get(ecKid).privateKey, dsaEncoding: 'der' }))}`;
  })());
  add('ES256 with r = s = 0 (psychic signature)', compact({ alg: 'ES256', typ: 'JWT', kid: ecKid }, good, Buffer.alloc(64)));
  add('RS256 signature truncated by one byte', (() => {
    const t = set.sign({ alg: 'RS256', payload: good });
    const sig = unb64u(t.split('.')[2]);
    return `${signingInput(t)}.${b64u(sig.subarray(0, sig.length - 1))}`;
  })());
  add('RS256 signature of another payload', (() => {
    const t = set.sign({ alg: 'RS256', payload: { ...good, sub: 'someone-else' } });
    return `${b64u({ alg: 'RS256', typ: 'JWT', kid: rsKid })}.${b64u(good)}.${t.split('.')[2]}`;
  })());

  // kid: unknown, absent, huge, path-like, wrong JSON types
  add('kid unknown', set.sign({ alg: 'RS256', payload: good, header: { kid: `unknown-${crypto.randomBytes(6).toString('hex')}` }, kid: rsKid }));
  add('kid absent', set.sign({ alg: 'RS256', payload: good, header: { kid: undefined }, kid: rsKid }));
  add('kid 10 KB', set.sign({ alg: 'RS256', payload: good, header: { kid: 'k'.repeat(10 * 1024) }, kid: rsKid }));
  for (const kid of ['../../../../etc/passwd', '/jwks.json', `../${set.name}/jwks.json`, `${set.url}`, "x' OR '1'='1", '%2e%2e%2f']) {
    add(`kid path-like/odd ${JSON.stringify(kid)}`, set.sign({ alg: 'RS256', payload: good, header: { kid }, kid: rsKid }));
  }
  add('kid a number', set.sign({ alg: 'RS256', payload: good, header: { kid: 1 }, kid: rsKid }));
  add('kid null', set.sign({ alg: 'RS256', payload: good, header: { kid: null }, kid: rsKid }));

  // jku / x5u / jwk / x5c: the attacker's key, named by the header
  const atk = server.attacker.keys.get('attacker-rs256');
  const atkSign = (header) => signJws({ alg: 'RS256', kid: 'attacker-rs256', payload: good, header, privateKey: atk.privateKey });
  add('jku pointing at the attacker', atkSign({ jku: server.attackerJku }));
  add('x5u pointing at the attacker', atkSign({ x5u: server.attackerX5u }));
  add('jku + x5u, real kid, attacker key', signJws({ alg: 'RS256', kid: rsKid, payload: good, header: { jku: server.attackerJku, x5u: server.attackerX5u }, privateKey: atk.privateKey }));
  add('embedded jwk (attacker key), attacker kid', atkSign({ jwk: atk.jwk }));
  add('embedded jwk (attacker key), real kid', signJws({ alg: 'RS256', kid: rsKid, payload: good, header: { jwk: { ...atk.jwk, kid: rsKid } }, privateKey: atk.privateKey }));

  // critical / JWE / nested headers on an otherwise valid token
  add('crit with an unknown name', set.sign({ alg: 'RS256', payload: good, header: { crit: ['x-unknown'], 'x-unknown': true } }));
  add('b64: false with crit', set.sign({ alg: 'RS256', payload: good, header: { crit: ['b64'], b64: false } }));
  add('cty JWT (nested)', set.sign({ alg: 'RS256', payload: good, header: { cty: 'JWT' } }));
  add('enc (JWE header)', set.sign({ alg: 'RS256', payload: good, header: { enc: 'A256GCM' } }));

  // time claims
  add('expired an hour ago', set.sign({ alg: 'RS256', payload: { ...good, iat: now - 7200, exp: now - 3600 } }));
  add('exp missing', set.sign({ alg: 'RS256', payload: { sub, iat: now } }));
  add('exp as a string', set.sign({ alg: 'RS256', payload: { ...good, exp: String(now + 600) } }));
  add('exp as a far string "9999999999"', set.sign({ alg: 'RS256', payload: { ...good, exp: '9999999999' } }));
  add('exp null', set.sign({ alg: 'RS256', payload: { ...good, exp: null } }));
  add('exp true', set.sign({ alg: 'RS256', payload: { ...good, exp: true } }));
  add('nbf an hour ahead', set.sign({ alg: 'RS256', payload: { ...good, nbf: now + 3600 } }));
  add('nbf as a string', set.sign({ alg: 'RS256', payload: { ...good, nbf: String(now + 3600) } }));
  add('iat as a string', set.sign({ alg: 'RS256', payload: { ...good, iat: String(now) } }));

  // claims content
  add('sub with NUL', set.sign({ alg: 'RS256', payload: { ...good, sub: 'bob\u0000' } }));

  // structure
  const valid = set.sign({ alg: 'RS256', payload: good });
  const [vh, vp, vs] = valid.split('.');
  add('2 segments', `${vh}.${vp}`);
  add('4 segments', `${valid}.${vs}`);
  add('5 segments (JWE shape)', `${vh}.${vp}.${vs}.${vs}.${vs}`);
  add('empty signature', `${vh}.${vp}.`);
  add('empty payload', `${vh}..${vs}`);
  add('padding "=" on the signature', `${valid}==`);
  add('standard base64 alphabet (+ and /) in the signature', (() => {
    // re-sign until the base64url signature has a '-' or '_', so the standard form differs
    for (let i = 0; ; i++) {
      const t = set.sign({ alg: 'RS256', payload: { ...good, jti: `std-${i}` } });
      const sig = t.split('.')[2];
      if (/[-_]/.test(sig)) return `${signingInput(t)}.${sig.replace(/-/g, '+').replace(/_/g, '/')}`;
    }
  })());
  add('whitespace inside', `${vh}.${vp}. ${vs}`);
  add('payload is a JSON array', set.sign({ alg: 'RS256', payload: [good] }));
  add('payload is JSON null', (() => {
    const input = `${vh}.${b64u('null')}`;
    return `${input}.${b64u(rawSign('RS256', rs.privateKey, input))}`;
  })());
  add('duplicate alg in the header (RS256 then none)', (() => {
    const h = `{"alg":"RS256","typ":"JWT","kid":${JSON.stringify(rsKid)},"alg":"none"}`;
    const input = `${b64u(h)}.${b64u(good)}`;
    return `${input}.${b64u(rawSign('RS256', rs.privateKey, input))}`;
  })());
  add('not base64 at all', 'not-a-jwt');
  return out;
}

/** A syntactically plausible token of about `bytes` bytes (a huge claim), validly signed. */
export function hugeToken(set, sub, bytes) {
  const now = nowSeconds();
  return set.sign({ alg: 'RS256', payload: { sub, iat: now, exp: now + 600, pad: 'x'.repeat(Math.ceil((bytes * 3) / 4)) } });
}

// ---------------------------------------------------------------------------
// A strict reference validator (for the self-test: every corpus token must fail it, every
// token the tests expect to work must pass it). Follows jwt-on-stock-postgres.md 4.2.
// ---------------------------------------------------------------------------

const KTY = { RS: 'RSA', PS: 'RSA', ES: 'EC', Ed: 'OKP' };

/** The member names of a JSON object text's top level, in order, duplicates kept. */
export function topLevelKeys(text) {
  const keys = [];
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const raw = text.slice(i, j + 1);
      let k = j + 1;
      while (k < text.length && /\s/.test(text[k])) k++;
      if (depth === 1 && text[k] === ':') keys.push(JSON.parse(raw));
      i = j;
    } else if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') depth--;
  }
  return keys;
}

/**
 * Validate `token` against JWKS document `jwks` ({ keys: [...] }). Returns the payload, or
 * throws an Error saying why not. `algorithms` is the allowlist; `audience` / `issuer` are
 * checked when given; `leeway` in seconds.
 */
export function referenceVerify(token, jwks, { algorithms = ['RS256', 'ES256', 'EdDSA'], audience, issuer, leeway = 30, now = nowSeconds(), maxLength = 8192 } = {}) {
  if (typeof token !== 'string' || token.length > maxLength) throw new Error('length');
  const parts = token.split('.');
  if (parts.length !== 3) throw new Error('segments');
  for (const p of parts) {
    if (!/^[A-Za-z0-9_-]+$/.test(p)) throw new Error('base64url alphabet or empty segment');
    if (b64u(unb64u(p)) !== p) throw new Error('non-canonical base64url');
  }
  const json = (p) => {
    const text = unb64u(p).toString('utf8');
    if (Buffer.from(text, 'utf8').compare(unb64u(p)) !== 0) throw new Error('invalid UTF-8');
    const v = JSON.parse(text);
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return { v, text };
  };
  const { v: header, text: headerText } = json(parts[0]);
  const hk = topLevelKeys(headerText);
  if (new Set(hk).size !== hk.length) throw new Error('duplicate header member');
  if (!algorithms.includes(header.alg)) throw new Error('alg not allowed');
  for (const bad of ['crit', 'b64', 'enc', 'zip']) if (bad in header) throw new Error(`header ${bad}`);
  if (header.cty !== undefined && String(header.cty).toUpperCase() === 'JWT') throw new Error('nested JWT');
  if (typeof header.kid !== 'string' || header.kid.length === 0 || header.kid.length > 256) throw new Error('kid');
  const candidates = jwks.keys.filter((k) => k.kid === header.kid && (k.use === undefined || k.use === 'sig'));
  if (candidates.length !== 1) throw new Error(candidates.length ? 'duplicate kid' : 'unknown kid');
  const jwk = candidates[0];
  if (jwk.kty !== KTY[header.alg.slice(0, 2)]) throw new Error('kty does not match alg');
  if (jwk.alg !== undefined && jwk.alg !== header.alg) throw new Error('jwk alg does not match');
  if (jwk.kty === 'EC' && jwk.crv !== { ES256: 'P-256', ES384: 'P-384' }[header.alg]) throw new Error('curve');
  const publicKey = crypto.createPublicKey({ key: { kty: jwk.kty, n: jwk.n, e: jwk.e, crv: jwk.crv, x: jwk.x, y: jwk.y }, format: 'jwk' });
  const signature = unb64u(parts[2]);
  if (header.alg.startsWith('ES') && signature.length !== { ES256: 64, ES384: 96 }[header.alg]) throw new Error('ECDSA signature length');
  if (!rawVerify(header.alg, publicKey, `${parts[0]}.${parts[1]}`, signature)) throw new Error('signature');
  const { v: payload } = json(parts[1]);
  if (typeof payload.exp !== 'number' || !Number.isFinite(payload.exp)) throw new Error('exp');
  if (payload.exp + leeway <= now) throw new Error('expired');
  for (const c of ['nbf', 'iat']) if (c in payload && (typeof payload[c] !== 'number' || !Number.isFinite(payload[c]))) throw new Error(c);
  if ('nbf' in payload && payload.nbf > now + leeway) throw new Error('not yet valid');
  if (typeof payload.sub !== 'string' || payload.sub === '' || payload.sub.includes('\u0000')) throw new Error('sub');
  if (audience !== undefined) {
    const aud = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
    if (!aud.includes(audience)) throw new Error('aud');
  } else if ('aud' in payload) {
    throw new Error('aud present, none configured');
  }
  if (issuer !== undefined && payload.iss !== issuer) throw new Error('iss');
  return payload;
}
