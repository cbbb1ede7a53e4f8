import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    root: new URL('.', import.meta.url).pathname,
    include: ['*.test.js'],
    setupFiles: ['./setup.js'],
    fileParallelism: true,
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
});
