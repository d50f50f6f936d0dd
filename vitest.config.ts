import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Model tests start ONNX sessions; two cores do not profit from more parallel files.
    maxWorkers: 2,
    pool: 'forks',
  },
});
