// The test suite's side of branches: one branch per test file, made before the file's tests
// run and deleted after them. Used by setup.js (per file) and global-setup.js (per run).
export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`set ${name} (see sdk-tests/vitest-branches/README.md)`);
  return value;
}

/** A call to the wake service's API with the admin token; the JSON answer. */
export async function wake(method, path, body) {
  const res = await fetch(env('WAKE_URL') + path, {
    method,
    headers: { authorization: `Bearer ${env('WAKE_ADMIN_TOKEN')}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

/** A branch's connection string (the API's, which has no password) with the owner's password. */
export function withPassword(uri) {
  const url = new URL(uri);
  url.password = env('DATABASE_PASSWORD');
  return url.toString();
}

export function templateUrl() {
  const url = new URL(`postgresql://${env('ENDPOINT')}.localtest.me/${env('TEMPLATE_DATABASE')}`);
  url.username = env('DATABASE_OWNER');
  url.password = env('DATABASE_PASSWORD');
  return url.toString();
}

/**
 * The gateway runs on this machine without DNS or TLS: point the driver at it. This is test
 * infrastructure, set up here, not in the application.
 */
export function useLocalGateway(neonConfig) {
  const gateway = env('GATEWAY');
  neonConfig.fetchEndpoint = () => `http://${gateway}/sql`;
  neonConfig.wsProxy = (host, port) => `${gateway}/v2?address=${host}:${port}`;
  neonConfig.useSecureWebSocket = false;
}
