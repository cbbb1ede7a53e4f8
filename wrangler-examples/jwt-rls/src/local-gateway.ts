// ─── The one switch for local development ──────────────────────────────────────────────────
// Production sets no LOCAL_GATEWAY: the driver keeps its defaults and reaches the gateway over
// HTTPS and WSS at the connection string's host (its `api.` name for HTTP), as it does Neon.
// `wrangler dev` reads LOCAL_GATEWAY from .dev.vars ("127.0.0.1:4444" after `make up`): the
// driver then talks plain HTTP and WebSocket to that address, and the host inside DATABASE_URL
// (db.localtest.me) still names the endpoint, so nothing needs DNS.
import { neonConfig } from '@neondatabase/serverless';

export function useLocalGateway(gateway: string | undefined): void {
  if (!gateway) return;
  neonConfig.fetchEndpoint = () => `http://${gateway}/sql`;
  neonConfig.wsProxy = (host, port) => `${gateway}/v2?address=${host}:${port}`;
  neonConfig.useSecureWebSocket = false;
}
