// Self-test of the JWT tests' JWKS server and signing helpers (test/jwks-server.js): needs no
// stack (no environment variables), only node:crypto and node:http. Tokens of every algorithm
// verify with node:crypto against the published JWKs; rotation, the failure modes (500, down,
// hang), per-path counts and the attacker paths behave as jwt.test.js assumes; the attack
// corpus is rejected, and normal tokens accepted, by a strict reference validator.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import {
  startJwksServer,
  attackCorpus,
  hugeToken,
  referenceVerify,
  decode,
  unb64u,
  b64u,
  signingInput,
  rawVerify,
  compact,
  nowSeconds,
  topLevelKeys,
} from './jwks-server.js';
import { drizzleKitSql, rejection, parseEnvelope, LEAKY } from './jwt-helpers.js';
import { NeonDbError } from '@neondatabase/serverless';
import { pgTable, serial, text } from 'drizzle-orm/pg-core';
import { sql as dsql } from 'drizzle-orm';
import { authenticatedRole, crudPolicy, authUid } from 'drizzle-orm/neon';

let srv;

before(async () => {
  srv = await startJwksServer();
});

after(async () => {
  await srv?.stop();
});

async function getJwks(set) {
  const res = await fetch(set.url, { signal: AbortSignal.timeout(5000) });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^application\/json/);
  return res.json();
}

const verifyWithJwk = (token, jwk) => {
  const { header } = decode(token);
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  return rawVerify(header.alg, key, signingInput(token), unb64u(token.split('.')[2]));
};

test('listens on 127.0.0.1 and a free port; unknown paths are 404 and counted', async () => {
  assert.match(srv.baseUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
  assert.ok(srv.port > 0);
  const res = await fetch(`${srv.baseUrl}/nothing/here`);
  assert.equal(res.status, 404);
  await res.text();
  assert.equal(srv.count('/nothing/here'), 1);
});

test('RS256, ES256 and EdDSA tokens verify with node:crypto against the published JWKs', async () => {
  const set = srv.addSet('selftest');
  const doc = await getJwks(set);
  assert.equal(doc.keys.length, 3);
  for (const jwk of doc.keys) {
    assert.equal(jwk.use, 'sig');
    assert.equal(typeof jwk.kid, 'string');
    assert.ok(!('d' in jwk), 'no private member is published');
    assert.ok(!('p' in jwk) && !('q' in jwk) && !('dp' in jwk), 'no RSA private members');
  }
  assert.deepStrictEqual(doc.keys.map((k) => [k.kty, k.alg, k.crv ?? null]), [
    ['RSA', 'RS256', null],
    ['EC', 'ES256', 'P-256'],
    ['OKP', 'EdDSA', 'Ed25519'],
  ]);
  for (const alg of ['RS256', 'ES256', 'EdDSA']) {
    const token = set.token('alice', { alg });
    const { header, payload, signature } = decode(token);
    assert.deepStrictEqual(header, { alg, typ: 'JWT', kid: set.kid(alg) });
    assert.equal(payload.sub, 'alice');
    assert.ok(payload.exp > nowSeconds() + 500 && payload.exp <= nowSeconds() + 600);
    if (alg === 'ES256') assert.equal(signature.length, 64, 'ES256 signatures are raw r||s');
    if (alg === 'EdDSA') assert.equal(signature.length, 64);
    if (alg === 'RS256') assert.equal(signature.length, 256);
    const jwk = doc.keys.find((k) => k.kid === header.kid);
    assert.ok(verifyWithJwk(token, jwk), `${alg} verifies`);
    // and with node:crypto's own JWS-independent verify of the same bytes
    const other = doc.keys.find((k) => k.kid !== header.kid && k.kty === jwk.kty);
    assert.equal(other, undefined);
    // a flipped payload byte breaks it
    const [h, p, s] = token.split('.');
    const tampered = `${h}.${b64u({ ...payload, sub: 'bob' })}.${s}`;
    assert.equal(verifyWithJwk(tampered, jwk), false, `${alg}: tampered payload`);
    assert.deepStrictEqual(referenceVerify(token, doc), payload);
    assert.throws(() => referenceVerify(tampered, doc), /signature/);
    void p;
  }
  // RS256 is PKCS#1 v1.5: node's default RSA verify with sha256 accepts it
  const t = set.token('x', { alg: 'RS256' });
  const key = crypto.createPublicKey({ key: doc.keys[0], format: 'jwk' });
  assert.ok(crypto.verify('sha256', Buffer.from(signingInput(t)), key, unb64u(t.split('.')[2])));
  // PS256 and ES384 keys can be added too
  set.addKey('PS256');
  set.addKey('ES384');
  const doc2 = await getJwks(set);
  for (const alg of ['PS256', 'ES384']) {
    const token = set.token('carol', { alg });
    assert.ok(verifyWithJwk(token, doc2.keys.find((k) => k.kid === set.kid(alg))), `${alg} verifies`);
    assert.equal(referenceVerify(token, doc2, { algorithms: [alg] }).sub, 'carol');
  }
});

test('header overrides, and sign() with explicit payloads', async () => {
  const set = srv.sets.get('selftest');
  const t = set.sign({ alg: 'ES256', payload: { sub: 'z', exp: 1 }, header: { typ: undefined, x5u: 'http://e/' } });
  assert.deepStrictEqual(decode(t).header, { alg: 'ES256', kid: set.kid('ES256'), x5u: 'http://e/' });
  assert.deepStrictEqual(decode(t).payload, { sub: 'z', exp: 1 });
  const ttl = set.token('u', { ttl: -10, claims: { aud: 'a', iat: undefined } });
  const p = decode(ttl).payload;
  assert.ok(p.exp < nowSeconds());
  assert.equal(p.aud, 'a');
  assert.ok(!('iat' in p));
  assert.equal(compact({ raw: 'AA' }, { raw: 'BB' }, { raw: '' }), 'AA.BB.');
  // an unknown kid is signed with the current key for the alg
  const unknown = set.token('u', { alg: 'EdDSA', kid: 'never-made' });
  assert.equal(decode(unknown).header.kid, 'never-made');
  const jwk = (await getJwks(set)).keys.find((k) => k.kid === set.kid('EdDSA'));
  assert.ok(verifyWithJwk(unknown, jwk));
  assert.throws(() => set.token('u', { alg: 'PS512', kid: 'never-made' }), /no key/);
});

test('rotation: the new kid is published, the old one no longer (but can still sign)', async () => {
  const set = srv.addSet('rot-self', ['RS256', 'ES256']);
  const before = set.requests;
  const old = set.kid('ES256');
  const { oldKid, newKid } = set.rotate('ES256');
  assert.equal(oldKid, old);
  assert.notEqual(newKid, old);
  const doc = await getJwks(set);
  assert.equal(set.requests, before + 1, 'the fetch is counted');
  assert.ok(set.lastRequestAt <= Date.now() && set.lastRequestAt > Date.now() - 5000);
  const kids = doc.keys.map((k) => k.kid);
  assert.ok(kids.includes(newKid) && !kids.includes(oldKid), `published: ${kids}`);
  assert.equal(kids.length, 2);
  const fresh = set.token('a', { alg: 'ES256' });
  assert.equal(decode(fresh).header.kid, newKid);
  assert.equal(referenceVerify(fresh, doc).sub, 'a');
  const stale = set.token('a', { alg: 'ES256', kid: oldKid });
  assert.equal(decode(stale).header.kid, oldKid);
  assert.throws(() => referenceVerify(stale, doc), /unknown kid/);
});

test('failure modes: 500 with HTML, down (connection destroyed), hang (no answer), then ok again', async () => {
  const set = srv.addSet('modes', ['RS256']);
  set.mode = '500';
  const r500 = await fetch(set.url);
  assert.equal(r500.status, 500);
  assert.match(await r500.text(), /<html>/);
  set.mode = 'down';
  await assert.rejects(fetch(set.url, { signal: AbortSignal.timeout(5000) }), (err) => err.name === 'TypeError');
  set.mode = 'hang';
  await assert.rejects(fetch(set.url, { signal: AbortSignal.timeout(300) }), (err) => err.name === 'TimeoutError' || err.name === 'AbortError');
  set.mode = 'ok';
  assert.equal((await getJwks(set)).keys.length, 1);
  assert.equal(set.requests, 4, 'every attempt is counted, whatever the mode');
  assert.equal(srv.count(set.path), 4);
});

test('the attacker paths serve a JWKS and a PEM, and are counted apart', async () => {
  assert.equal(srv.attackerRequests, 0);
  const res = await fetch(srv.attackerJku);
  assert.equal(res.status, 200);
  const doc = await res.json();
  assert.equal(doc.keys[0].kid, 'attacker-rs256');
  const pem = await (await fetch(srv.attackerX5u)).text();
  assert.match(pem, /BEGIN PUBLIC KEY/);
  assert.equal(srv.attackerRequests, 2);
});

test('duplicate kids: two different keys under one kid are both published; each signs', async () => {
  const set = srv.addSet('dup-self', []);
  const a = set.addKey('RS256', { kid: 'dup' });
  const b = set.addKey('RS256', { kid: 'dup' });
  const doc = await getJwks(set);
  assert.equal(doc.keys.length, 2);
  assert.deepStrictEqual(doc.keys.map((k) => k.kid), ['dup', 'dup']);
  assert.notEqual(doc.keys[0].n, doc.keys[1].n);
  const ta = set.token('a', { kid: 'dup', key: a });
  const tb = set.token('b', { kid: 'dup', key: b });
  assert.ok(verifyWithJwk(ta, doc.keys[0]) && !verifyWithJwk(ta, doc.keys[1]));
  assert.ok(verifyWithJwk(tb, doc.keys[1]) && !verifyWithJwk(tb, doc.keys[0]));
  assert.throws(() => referenceVerify(tb, doc), /duplicate kid/);
});

test('the attack corpus: every token is rejected by the strict reference validator', async () => {
  const set = srv.addSet('corpus-self');
  const doc = await getJwks(set);
  const corpus = attackCorpus(srv, set, 'mallory');
  assert.ok(corpus.length >= 50, `corpus size ${corpus.length}`);
  assert.equal(new Set(corpus.map((c) => c.name)).size, corpus.length, 'unique names');
  assert.equal(new Set(corpus.map((c) => c.token)).size, corpus.length, 'distinct tokens');
  for (const { name, token } of corpus) {
    assert.equal(typeof token, 'string', name);
    assert.throws(() => referenceVerify(token, doc), Error, `the reference validator accepts "${name}"`);
  }
  // the valid baseline used to build it does pass
  for (const alg of ['RS256', 'ES256', 'EdDSA']) assert.equal(referenceVerify(set.token('mallory', { alg }), doc).sub, 'mallory');
  // sanity of a few entries
  const byName = Object.fromEntries(corpus.map((c) => [c.name, c.token]));
  assert.equal(decode(byName['alg none, empty signature']).header.alg, 'none');
  assert.equal(byName['alg none, empty signature'].split('.')[2], '');
  assert.equal(decode(byName['jku pointing at the attacker']).header.jku, srv.attackerJku);
  assert.equal(decode(byName['x5u pointing at the attacker']).header.x5u, srv.attackerX5u);
  assert.equal(decode(byName['kid 10 KB']).header.kid.length, 10240);
  assert.equal(typeof decode(byName['exp as a string']).payload.exp, 'string');
  assert.ok(decode(byName['nbf an hour ahead']).payload.nbf > nowSeconds() + 3000);
  const hs = byName['HS256 signed with the RSA public key (SPKI PEM)'];
  const pem = set.keys.get(set.kid('RS256')).publicKey.export({ type: 'spki', format: 'pem' });
  assert.ok(rawVerify('HS256', pem, signingInput(hs), unb64u(hs.split('.')[2])), 'a real HMAC with the PEM as the secret');
  assert.equal(srv.attackerRequests, 2, 'building the corpus fetches nothing');
});

test('hugeToken: about the requested size, validly signed', async () => {
  const set = srv.sets.get('corpus-self');
  const t = hugeToken(set, 'big', 1024 * 1024);
  assert.ok(t.length >= 1024 * 1024 && t.length < 1024 * 1024 + 4096, `length ${t.length}`);
  const doc = await getJwks(set);
  assert.equal(referenceVerify(t, doc, { maxLength: 2 * 1024 * 1024 }).sub, 'big');
  assert.throws(() => referenceVerify(t, doc), /length/);
});

test('stop() closes hung requests and the listener', async () => {
  const other = await startJwksServer();
  const set = other.addSet('h', ['EdDSA']);
  set.mode = 'hang';
  const pending = fetch(set.url).then(
    () => 'answered',
    () => 'failed',
  );
  await new Promise((r) => setTimeout(r, 100));
  await other.stop();
  assert.equal(await pending, 'failed');
  await assert.rejects(fetch(set.url, { signal: AbortSignal.timeout(2000) }));
});

test('topLevelKeys: only the top level, duplicates kept, strings with quotes and braces', () => {
  assert.deepStrictEqual(topLevelKeys('{"alg":"RS256","jwk":{"kid":"x","alg":"y"},"kid":"a\\"}{","alg":"none"}'), ['alg', 'jwk', 'kid', 'alg']);
  assert.deepStrictEqual(topLevelKeys('{"a":[{"b":1}],"c":"d:e"}'), ['a', 'c']);
});

test('drizzleKitSql: the statements drizzle-kit generates for a table with crudPolicy / authUid', () => {
  const t = pgTable(
    'sdkt_dz',
    { id: serial('id').primaryKey(), userId: text('user_id').notNull().default(dsql`(auth.user_id())`), body: text('body').notNull() },
    (t) => [crudPolicy({ role: authenticatedRole, read: authUid(t.userId), modify: authUid(t.userId) })],
  );
  const check = '(select auth.user_id() = "sdkt_dz"."user_id")';
  assert.deepStrictEqual(drizzleKitSql(t), [
    'CREATE TABLE "sdkt_dz" (\n\t"id" serial PRIMARY KEY NOT NULL,\n\t"user_id" text DEFAULT (auth.user_id()) NOT NULL,\n\t"body" text NOT NULL\n);',
    'ALTER TABLE "sdkt_dz" ENABLE ROW LEVEL SECURITY;',
    `CREATE POLICY "crud-authenticated-policy-select" ON "sdkt_dz" AS PERMISSIVE FOR SELECT TO "authenticated" USING (${check});`,
    `CREATE POLICY "crud-authenticated-policy-insert" ON "sdkt_dz" AS PERMISSIVE FOR INSERT TO "authenticated" WITH CHECK (${check});`,
    `CREATE POLICY "crud-authenticated-policy-update" ON "sdkt_dz" AS PERMISSIVE FOR UPDATE TO "authenticated" USING (${check}) WITH CHECK (${check});`,
    `CREATE POLICY "crud-authenticated-policy-delete" ON "sdkt_dz" AS PERMISSIVE FOR DELETE TO "authenticated" USING (${check});`,
  ]);
});

test('rejection: 4xx in the driver error shape with a generic message passes; 5xx, leaks, other errors fail', () => {
  const neonErr = (message, code) => {
    const e = new NeonDbError(message);
    if (code) e.code = code;
    return e;
  };
  // a 400 with a Postgres-like error (the driver parsed the JSON)
  assert.deepStrictEqual(rejection(neonErr('password authentication failed for user \'authenticated\'', '28P01'), 400, 'x'), {
    status: 400,
    message: "password authentication failed for user 'authenticated'",
    code: '28P01',
    body: undefined,
  });
  // a 401 with a JSON body
  const r = rejection(neonErr('Server error (HTTP status 401): {"message":"authentication failed","code":"28000"}'), 401, 'x');
  assert.equal(r.status, 401);
  assert.equal(r.message, 'authentication failed');
  assert.equal(r.code, '28000');
  assert.throws(() => rejection(neonErr('Server error (HTTP status 500): {"message":"authentication failed"}'), 500, 'x'), /4xx/);
  assert.throws(() => rejection(neonErr('Server error (HTTP status 401): not json'), 401, 'x'), /not JSON/);
  assert.throws(() => rejection(neonErr('JWT expired'), 400, 'x'), /generic/);
  assert.throws(() => rejection(neonErr('Server error (HTTP status 401): {"message":"unknown kid"}'), 401, 'x'), /generic/);
  assert.throws(() => rejection(neonErr('Error connecting to database: TypeError: fetch failed'), undefined, 'x'), /no HTTP answer/);
  assert.throws(() => rejection(new Error('boom'), 400, 'x'), /NeonDbError/);
  assert.throws(() => rejection(neonErr('authentication failed'), undefined, 'x'), /unknown HTTP status/);
  for (const m of ['authentication failed', "password authentication failed for user 'jwt_corpus'", 'invalid authentication token']) assert.doesNotMatch(m, LEAKY);
  for (const m of ['token expired', 'invalid signature', 'no key with kid "a"', 'wrong audience', 'nbf in the future', 'JWKS fetch failed']) assert.match(m, LEAKY);
});

test('parseEnvelope: the contract envelope and mac shapes', () => {
  const env = '{"v":1,"pid":123,"bs":1733500000000000,"role":"authenticated","exp":1900000000,"ctr":2,"claims":{"sub":"alice"}}';
  const mac = `v1.1.${'ab'.repeat(32)}`;
  assert.equal(parseEnvelope(env, mac).claims.sub, 'alice');
  assert.equal(parseEnvelope(env.replace('{"sub":"alice"}', 'null'), mac).claims, null);
  assert.throws(() => parseEnvelope(env, 'v1.1.XYZ'), /mac/);
  assert.throws(() => parseEnvelope('{"pid":1,"v":1,"bs":1,"role":"a","exp":1,"ctr":1,"claims":null}', mac), /keys/);
  assert.throws(() => parseEnvelope('', mac), /empty/);
  assert.throws(() => parseEnvelope(env.replace('"ctr":2', '"ctr":"2"'), mac), /ctr/);
});
