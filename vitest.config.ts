import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The protobuf code is generated, not committed: a bare `npx vitest run` generates it too.
    globalSetup: ['scripts/gen-proto.mjs'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Native engines (onnxruntime, tfjs-wasm) hold process-wide state; forks isolate them.
    pool: 'forks',
  },
});
