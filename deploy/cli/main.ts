#!/usr/bin/env node
// The `aios` executable: everything lives in program.ts so tests can drive it in-process.
import { main } from './program.js';

process.exitCode = await main(process.argv.slice(2));
