/**
 * Crash tests in real processes. A child process (test/fixtures/store/store-child.mjs) runs an
 * install or a rollback on the store and is SIGKILLed: deterministically right after each of its
 * file-system calls in turn (every boundary between two calls), and at random instants. Then
 * this process reopens the store (which runs GC) and checks the invariant: the active version is
 * the old one or the new one, complete and matching its digests, with the right previous one,
 * and nothing else left behind. It also runs two installs in two processes at once.
 *
 * What this proves and what not: SIGKILL stops the process between (or, for the random kills,
 * inside) system calls, but the kernel keeps its page cache, so everything written before the
 * kill is still seen afterwards. It proves the store's order of operations leaves a consistent
 * state at every step and that recovery and the stale lock work; it does not prove the data
 * reached the disk before a power cut (the fsyncs). durability.test.ts checks that the fsyncs
 * are issued in the order that needs; docs/store.md lists what remains untested.
 */
import { spawn } from 'node:child_process';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelStore } from '../../../../models/store/model-store.js';
import { modelFiles, tree, writerOf } from './helpers.js';
import { transpileGraph } from '../../../support/transpile.js';
import { mulberry32 } from '../../../support/random.js';

const repo = path.resolve(import.meta.dirname, '../../../..');
const child = path.join(repo, 'test/fixtures/store/store-child.mjs');
const MODEL = 'detector';
const LANES = 4;
let work: string;
let storeModule: string;
let sources: Record<string, string>;

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'aios-store-crash-'));
  storeModule = pathToFileURL(await transpileGraph(repo, 'models/store/model-store.ts', path.join(work, 'build'))).href;
  sources = {};
  for (const [v, size] of [['2.0.0', 4096], ['3.0.0', 4096], ['big', 3 << 20]] as const) {
    sources[v] = path.join(work, 'src', v);
    for (const [p, data] of Object.entries(modelFiles(v, size))) {
      await mkdir(path.dirname(path.join(sources[v], p)), { recursive: true });
      await writeFile(path.join(sources[v], p), data);
    }
  }
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

interface Run {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

function runChild(env: Record<string, string>, killAfterMs?: number): Promise<Run> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [child], { env: { ...process.env, STORE_MODULE: storeModule, STORE_MODEL: MODEL, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = killAfterMs === undefined ? undefined : setTimeout(() => p.kill('SIGKILL'), killAfterMs);
    p.on('error', reject);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** A store at `root` with 1.0.0 previous and 1.1.0 active, installed by this process once and copied (modes kept) after. */
async function seed(root: string): Promise<void> {
  const template = path.join(work, 'template');
  templateReady ??= (async () => {
    const store = await ModelStore.open(template);
    for (const v of ['1.0.0', '1.1.0']) await store.install(MODEL, v, writerOf(modelFiles(v)));
  })();
  await templateReady;
  await cp(template, root, { recursive: true });
}
let templateReady: Promise<void> | undefined;

/** What the store looks like after a crash and a reopen; fails the test if it is not consistent. */
async function recover(root: string, label: string): Promise<{ active: string; previous: string | undefined }> {
  const store = await ModelStore.open(root);
  const list = await store.list();
  expect(list.map((e) => e.model), label).toEqual([MODEL]);
  const [entry] = list;
  const active = entry?.active;
  expect(active, `${label}: an active version`).toBeDefined();
  expect(entry?.inactive, `${label}: GC left no other slot`).toEqual([]);
  // Complete and intact: every file is there with its recorded size and digest ...
  await expect(store.check(MODEL), label).resolves.toMatchObject({ version: active?.version });
  if (entry?.previous !== undefined) await store.check(MODEL, { version: entry.previous.version });
  // ... and the bytes are those of that version, not a mix.
  const version = active?.version ?? '';
  const expected = sources[version] === undefined ? modelFiles(version) : await sourceFiles(version);
  for (const [p, data] of Object.entries(expected)) expect((await readFile(path.join(active?.dir ?? '', p))).equals(data), `${label}: ${p}`).toBe(true);
  // Nothing else survives: no staging or trash folders, no temporary state, no stale lock.
  expect((await readdir(path.join(root, MODEL))).sort(), label).toEqual(['slots', 'state.json']);
  expect((await readdir(path.join(root, MODEL, 'slots'))).sort(), label).toEqual([active?.id, entry?.previous?.id].filter((x) => x !== undefined).sort());
  return { active: active?.version ?? '', previous: entry?.previous?.version };
}

async function sourceFiles(version: string): Promise<Record<string, Buffer>> {
  const dir = sources[version] ?? '';
  const files = (await tree(dir)).filter((n) => !n.endsWith('/'));
  return Object.fromEntries(await Promise.all(files.map(async (p) => [p, await readFile(path.join(dir, p))] as const)));
}

/** Runs `task(0..n-1)`, LANES at a time: the children spend much of their time in fsync. */
async function pool<T>(n: number, task: (i: number) => Promise<T>): Promise<T[]> {
  const results: T[] = new Array<T>(n);
  let next = 0;
  const lane = async (): Promise<void> => {
    for (let i = next++; i < n; i = next++) results[i] = await task(i);
  };
  await Promise.all(Array.from({ length: LANES }, lane));
  return results;
}

/**
 * Kills the child after each file-system call in turn, until a run completes. Returns, for each
 * kill point, the state after recovery.
 */
async function sweep(name: string, op: Record<string, string>): Promise<{ active: string; previous: string | undefined }[]> {
  const probe = path.join(work, `${name}-probe`);
  await seed(probe);
  const full = await runChild({ ...op, STORE_ROOT: probe });
  expect(full.code, full.stderr).toBe(0);
  const calls = (JSON.parse(full.stdout) as { calls: number }).calls;
  expect(calls).toBeGreaterThan(10);
  return pool(calls, async (i) => {
    const n = i + 1;
    const root = path.join(work, `${name}-${n}`);
    await seed(root);
    const run = await runChild({ ...op, STORE_ROOT: root, KILL_AFTER: String(n) });
    // The last call is the last one: the child may have finished its work and be killed on the way out.
    if (n < calls) expect(run.signal, `kill after call ${n}: ${run.stderr}`).toBe('SIGKILL');
    const state = await recover(root, `${name}, killed after call ${n} of ${calls}`);
    await rm(root, { recursive: true, force: true });
    return state;
  });
}

describe('model store: a process killed at every step', () => {
  it('an install killed after any file-system call leaves the old version or the new one, complete', async () => {
    const states = await sweep('install', { STORE_OP: 'install', STORE_VERSION: '2.0.0', STORE_SOURCE: sources['2.0.0'] ?? '' });
    const old = { active: '1.1.0', previous: '1.0.0' };
    const fresh = { active: '2.0.0', previous: '1.1.0' };
    const switchAt = states.findIndex((s) => s.active === '2.0.0');
    expect(switchAt, 'some kill points come after the switch').toBeGreaterThan(0);
    // One switch point: before it the old pair, from it on the new pair, never anything else.
    expect(states.slice(0, switchAt)).toEqual(states.slice(0, switchAt).map(() => old));
    expect(states.slice(switchAt)).toEqual(states.slice(switchAt).map(() => fresh));
  });

  it('a rollback killed after any file-system call leaves one of the two versions active, the other previous', async () => {
    const states = await sweep('rollback', { STORE_OP: 'rollback' });
    const switchAt = states.findIndex((s) => s.active === '1.0.0');
    expect(switchAt).toBeGreaterThan(0);
    expect(states.slice(0, switchAt).every((s) => s.active === '1.1.0' && s.previous === '1.0.0')).toBe(true);
    expect(states.slice(switchAt).every((s) => s.active === '1.0.0' && s.previous === '1.1.0')).toBe(true);
  });
});

describe('model store: a process killed at a random instant', () => {
  it('an install of a 4.5 MiB model killed at random leaves a consistent store', async () => {
    const op = { STORE_OP: 'install', STORE_VERSION: 'big', STORE_SOURCE: sources.big ?? '' };
    const probe = path.join(work, 'random-probe');
    await seed(probe);
    const started = Date.now();
    const full = await runChild({ ...op, STORE_ROOT: probe });
    expect(full.code, full.stderr).toBe(0);
    const span = Date.now() - started;
    // Seeded, so a failure can be replayed: the seed is in the label.
    const seedValue = Number(process.env.AIOS_CRASH_SEED ?? Date.now() % 100_000);
    const random = mulberry32(seedValue);
    const outcomes = await pool(10, async (i) => {
      const root = path.join(work, `random-${i}`);
      await seed(root);
      const delay = Math.floor(random() * span);
      await runChild({ ...op, STORE_ROOT: root }, delay);
      const state = await recover(root, `random kill ${i} after ${delay} ms of ${span} (AIOS_CRASH_SEED=${seedValue})`);
      expect([JSON.stringify({ active: '1.1.0', previous: '1.0.0' }), JSON.stringify({ active: 'big', previous: '1.1.0' })]).toContain(JSON.stringify(state));
      return state.active;
    });
    expect(outcomes).toHaveLength(10);
  });
});

describe('model store: two processes at once', () => {
  it('two installs of one model in two processes both succeed and leave a consistent A/B pair', async () => {
    for (let round = 0; round < 3; round += 1) {
      const root = path.join(work, `pair-${round}`);
      await seed(root);
      const [a, b] = await Promise.all([
        runChild({ STORE_OP: 'install', STORE_VERSION: '2.0.0', STORE_SOURCE: sources['2.0.0'] ?? '', STORE_ROOT: root }),
        runChild({ STORE_OP: 'install', STORE_VERSION: '3.0.0', STORE_SOURCE: sources['3.0.0'] ?? '', STORE_ROOT: root }),
      ]);
      expect(a.code, a.stderr).toBe(0);
      expect(b.code, b.stderr).toBe(0);
      const state = await recover(root, `round ${round}`);
      expect([state.active, state.previous].sort()).toEqual(['2.0.0', '3.0.0']);
    }
  });
});
