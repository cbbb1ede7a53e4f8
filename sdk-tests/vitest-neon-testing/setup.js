// The gateway runs on this machine without DNS or TLS: the driver is pointed at it. This is
// test infrastructure; the application's code (../vitest-branches/src/db.js) is unchanged.
import { neonConfig } from '@neondatabase/serverless';
import ws from 'ws';

const gateway = process.env.GATEWAY;
neonConfig.webSocketConstructor = ws; // Node 20 has no global WebSocket
neonConfig.fetchEndpoint = () => `http://${gateway}/sql`;
neonConfig.wsProxy = (host, port) => `${gateway}/v2?address=${host}:${port}`;
neonConfig.useSecureWebSocket = false;
