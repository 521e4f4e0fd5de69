#!/usr/bin/env node
// The `aios` executable: everything lives in program.ts so tests can drive it in-process.
import { main } from './program.js';

// `aios devices | head` closes the pipe early; that is the reader's choice, not an error.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw error;
  });
}

process.exitCode = await main(process.argv.slice(2));
