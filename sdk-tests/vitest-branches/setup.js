// Vitest setupFiles: runs in each test file's worker before the file. It makes the file's own
// branch of the template (10 minutes' TTL, labelled with the run) and points DATABASE_URL at
// it; the application reads DATABASE_URL as it always does. After the file, the branch goes.
import { neonConfig } from '@neondatabase/serverless';
import { afterAll, inject } from 'vitest';
import ws from 'ws';
import { env, useLocalGateway, wake, withPassword } from './branch.js';

neonConfig.webSocketConstructor = ws; // Node 20 has no global WebSocket
useLocalGateway(neonConfig);

const branch = await wake('POST', `/v1/endpoints/${env('ENDPOINT')}/branches`, {
  from: env('TEMPLATE_DATABASE'),
  ttl_seconds: 600,
  labels: { 'vitest-run': inject('run') },
});
process.env.DATABASE_URL = withPassword(branch.connection_uris.direct);
process.env.BRANCH_NAME = branch.name;

afterAll(async () => {
  await wake('DELETE', `/v1/endpoints/${env('ENDPOINT')}/branches/${branch.name}`);
});
