import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    root: new URL('.', import.meta.url).pathname,
    include: ['*.test.js'],
    globalSetup: ['./global-setup.js'],
    setupFiles: ['./setup.js'],
    // Test files run in parallel, each on its own branch.
    fileParallelism: true,
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
});
