// Lets a plain `node` child process import aios's TypeScript sources: the test suite runs under
// vitest, which transpiles in-process, but a crash test needs a real process to SIGKILL.
// Usage: node --import ./register-ts.mjs script.mjs
import { register } from 'node:module';

register('./ts-hooks.mjs', import.meta.url);
