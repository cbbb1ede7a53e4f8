// neon-testing, as its README sets it up: one factory for the suite, called once in each test
// file to give that file a branch of its own (made before the file, deleted after it, with
// a 10-minute expiry in case the run dies). Nothing here is specific to this service but
// the API's address.
//
// Needs NEON_API_KEY (the wake service's admin token), NEON_PROJECT_ID (an endpoint's id) and
// NEON_API_HOST (the wake service's /api/v2).
import { makeNeonTesting } from 'neon-testing';

export const neonTesting = makeNeonTesting({
  apiKey: process.env.NEON_API_KEY,
  projectId: process.env.NEON_PROJECT_ID,
});

// neon-testing has no option for the API's address: the client it made is given this
// service's (its axios instance's baseURL), as `createApiClient({ baseURL })` would.
neonTesting.api.instance.defaults.baseURL = process.env.NEON_API_HOST;
