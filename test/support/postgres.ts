import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { freePort, until } from './wait.js';

/**
 * A throwaway PostgreSQL server for tests: its own cluster in a temporary folder (initdb), on a
 * free loopback port, trust authentication, no fsync (the tests are about behaviour, not
 * durability of this server). PostgreSQL refuses to run as root, so as root it runs as the
 * `postgres` user the Debian package creates. `database()` makes a fresh database per test.
 */
export interface Postgres {
  /** A new empty database; its URL. */
  database(): Promise<string>;
  stop(): Promise<void>;
}

/** Where Debian puts the server binaries (postgresql-<major>), else the PATH's. */
function binaries(): string | undefined {
  const debian = '/usr/lib/postgresql';
  if (existsSync(debian)) {
    const majors = readdirSync(debian).filter((v) => existsSync(path.join(debian, v, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a));
    if (majors[0] !== undefined) return path.join(debian, majors[0], 'bin');
  }
  const found = spawnSync('sh', ['-c', 'command -v initdb'], { encoding: 'utf8' }).stdout.trim();
  return found === '' ? undefined : path.dirname(found);
}

/** Why the PostgreSQL tests cannot run here, or undefined when they can. */
export function postgresMissing(): string | undefined {
  if (binaries() === undefined) return 'PostgreSQL is not installed (Debian: apt-get install postgresql; make test installs it as root)';
  if (process.getuid?.() === 0 && spawnSync('id', ['-u', 'postgres']).status !== 0) return "running as root, and there is no 'postgres' user to run the server as";
  return undefined;
}

export async function startPostgres(): Promise<Postgres> {
  const bin = binaries();
  if (bin === undefined) throw new Error(postgresMissing());
  const root = process.getuid?.() === 0;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'aios-pg-'));
  const data = path.join(dir, 'data');
  if (root) {
    const uid = Number(spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).stdout);
    const gid = Number(spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).stdout);
    chownSync(dir, uid, gid);
  }
  const as = (command: string, args: string[]): [string, string[]] => (root ? ['runuser', ['-u', 'postgres', '--', command, ...args]] : [command, args]);
  const [initCmd, initArgs] = as(path.join(bin, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'aios', '-E', 'UTF8', '--no-sync', '--no-instructions']);
  const init = spawnSync(initCmd, initArgs, { encoding: 'utf8' });
  if (init.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`initdb failed: ${init.stderr || init.stdout}`);
  }
  const port = await freePort();
  const [cmd, args] = as(path.join(bin, 'postgres'), ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off', '-c', 'max_connections=200']);
  const server: ChildProcess = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  server.stderr?.on('data', (d: Buffer) => {
    log = (log + d.toString()).slice(-4000);
  });
  const admin = `postgres://aios@127.0.0.1:${port}/postgres`;
  try {
    await until(async () => {
      if (server.exitCode !== null) throw new Error(`postgres exited: ${log}`);
      const c = new pg.Client(admin);
      c.on('error', () => undefined);
      try {
        await c.connect();
        return true;
      } catch {
        return false;
      } finally {
        await c.end().catch(() => undefined);
      }
    }, 20_000);
  } catch (error) {
    server.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  let n = 0;
  return {
    async database() {
      const name = `aios_test_${process.pid}_${++n}`;
      const c = new pg.Client(admin);
      await c.connect();
      try {
        await c.query(`CREATE DATABASE ${name}`);
      } finally {
        await c.end();
      }
      return `postgres://aios@127.0.0.1:${port}/${name}`;
    },
    async stop() {
      if (server.exitCode === null) {
        const exited = once(server, 'exit');
        // The postmaster itself (under runuser when root, which does not pass signals on): fast shutdown.
        const pid = Number(readFileSync(path.join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
        process.kill(Number.isInteger(pid) && pid > 0 ? pid : (server.pid as number), 'SIGINT');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
