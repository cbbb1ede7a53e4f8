#!/usr/bin/env node
// A stand-in identity provider for local development (Node's crypto only): in production
// your provider (Clerk, Auth0, Stack, …) signs the tokens and publishes the key set.
//
//   node scripts/dev-keys.mjs keys             writes dev-keys/private.jwk.json and
//                                              dev-keys/jwks.json (the public set) once
//   node scripts/dev-keys.mjs token <user-id>  prints an ES256 token for that user, valid
//                                              for one hour (TTL_SECONDS to change)
// DEV_KEYS_DIR puts the keys elsewhere than ./dev-keys.
import { createPrivateKey, generateKeyPairSync, randomUUID, sign } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const dir = process.env.DEV_KEYS_DIR ?? path.join(path.dirname(new URL(import.meta.url).pathname), '..', 'dev-keys');
const privateFile = path.join(dir, 'private.jwk.json');
const jwksFile = path.join(dir, 'jwks.json');
const b64u = (data) => Buffer.from(data).toString('base64url');

function keys() {
  if (fs.existsSync(privateFile)) return console.log(`${jwksFile} exists`);
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'ES256', use: 'sig' };
  const { d: _private, ...pub } = jwk;
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.writeFileSync(privateFile, JSON.stringify(jwk), { mode: 0o600 });
  fs.writeFileSync(jwksFile, JSON.stringify({ keys: [pub] }, null, 2) + '\n');
  console.log(`wrote ${jwksFile}`);
}

function token(sub) {
  if (!sub) throw new Error('usage: dev-keys.mjs token <user-id>');
  const jwk = JSON.parse(fs.readFileSync(privateFile, 'utf8'));
  const now = Math.floor(Date.now() / 1000);
  const ttl = Number(process.env.TTL_SECONDS ?? 3600);
  const header = b64u(JSON.stringify({ alg: 'ES256', typ: 'JWT', kid: jwk.kid }));
  const claims = b64u(JSON.stringify({ sub, iat: now, exp: now + ttl, role: 'authenticated' }));
  const key = createPrivateKey({ key: jwk, format: 'jwk' });
  const signature = sign('sha256', Buffer.from(`${header}.${claims}`), { key, dsaEncoding: 'ieee-p1363' });
  console.log(`${header}.${claims}.${b64u(signature)}`);
}

const [command, arg] = process.argv.slice(2);
if (command === 'keys') keys();
else if (command === 'token') token(arg);
else {
  console.error('usage: dev-keys.mjs keys | token <user-id>');
  process.exit(2);
}
