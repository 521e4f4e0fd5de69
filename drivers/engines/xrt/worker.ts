import { fork, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DeviceUnavailableError } from '../../errors.js';
import { REPLY_MARK, type Reply, type Request, type WireError } from './protocol.js';

/** Distributes Request over its union members, so each op keeps its own fields. */
type WithoutId<R> = R extends unknown ? Omit<R, 'id'> : never;

/** A failed request: the step that failed in the worker and what XRT printed meanwhile. */
export class WorkerFailure extends Error {
  constructor(
    readonly failure: WireError,
    readonly output: string,
  ) {
    super(failure.message);
    this.name = 'WorkerFailure';
  }
}

export interface XrtWorkerOptions {
  /** The child script; defaults to `child.mjs` found by {@link resolveChildScript}. */
  readonly script?: string;
  /** Environment of the child (XCL_EMULATION_MODE, XILINX_XRT, XRT_INI_PATH); defaults to this process's. */
  readonly env?: NodeJS.ProcessEnv;
}

/**
 * One worker process running XRT for the engine, started on the first request and again on the
 * first request after it died. Requests may overlap: the child answers them in order. When the
 * child dies (a signal, an abort in XRT, a non-zero exit), every pending request is rejected with
 * DeviceUnavailableError EAI_XRT_CRASHED carrying the exit signal or code and the tail of what the
 * process printed, and `generation` moves on so that models loaded in the dead process know they
 * are gone. The child never keeps the parent alive while idle.
 */
export class XrtWorker {
  private proc: Proc | undefined;
  private nextId = 1;
  private started = 0;

  constructor(private readonly options: XrtWorkerOptions = {}) {}

  /**
   * Sends one request and resolves with the child's result. `timeoutMs` bounds the wait: past it
   * the child is killed (it may be stuck inside XRT) and the request fails as a crash.
   */
  request<T>(message: WithoutId<Request>, timeoutMs: number): Promise<T> {
    const proc = this.start();
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        proc.lastWords = `did not answer within ${timeoutMs} ms and was killed`;
        proc.child.kill('SIGKILL');
      }, timeoutMs);
      timer.unref();
      proc.pending.set(id, { op: message.op, resolve: resolve as (v: unknown) => void, reject, mark: proc.consumed + proc.output.length, timer });
      hold(proc, true);
      proc.child.send({ ...message, id } as Request, (error) => {
        if (error) settle(proc, id, undefined, error);
      });
    });
  }

  /** Stops the child (and with it every model loaded in it). */
  async close(): Promise<void> {
    const proc = this.proc;
    if (proc === undefined) return;
    await new Promise<void>((resolve) => {
      proc.child.once('close', () => resolve());
      proc.child.kill('SIGTERM');
    });
  }

  /** Counts started processes; a model remembers the generation it was loaded in. */
  get generation(): number {
    return this.started;
  }

  get running(): boolean {
    return this.proc !== undefined;
  }

  private start(): Proc {
    if (this.proc !== undefined) return this.proc;
    const script = this.options.script ?? resolveChildScript();
    // No inherited execArgv: the parent may run under a TypeScript loader or inspector the child does
    // not need. `detached` gives the child its own process group: XRT's sw_emu driver answers its
    // own segfault with kill(0, SIGSEGV), which would otherwise kill this process and its parents too.
    const child = fork(script, [], { execArgv: [], env: this.options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe', 'ipc'], serialization: 'advanced', detached: true });
    const proc: Proc = { child, pending: new Map(), output: '', consumed: 0, marks: new Map(), held: new Map() };
    this.proc = proc;
    this.started++;
    const collector = (): ((chunk: Buffer) => void) => {
      let partial = '';
      return (chunk) => {
        const text = chunk.toString('utf8');
        proc.output += text;
        // Bounded: XRT prints a banner, then the lines that matter come last.
        if (proc.output.length > 16384) {
          proc.consumed += proc.output.length - 8192;
          proc.output = proc.output.slice(-8192);
        }
        const lines = (partial + text).split('\n');
        partial = lines.pop() ?? '';
        for (const line of lines) if (line.startsWith(REPLY_MARK)) marked(proc, Number(line.slice(REPLY_MARK.length)));
      };
    };
    child.stdout?.on('data', collector());
    child.stderr?.on('data', collector());
    child.on('message', (reply: Reply) => {
      if (reply.ok) settle(proc, reply.id, reply.result);
      else holdFailure(proc, reply.id, reply.error);
    });
    child.on('error', (error) => {
      proc.output += `${error.message}\n`;
    });
    // A dead worker is replaced at once ('exit'); its requests fail once its output is all read ('close').
    child.on('exit', () => {
      if (this.proc === proc) this.proc = undefined;
    });
    child.on('close', (code, signal) => {
      if (this.proc === proc) this.proc = undefined;
      const how = proc.lastWords ?? (signal ? `was killed by ${signal}` : `exited with code ${code}`);
      for (const id of [...proc.held.keys()]) release(proc, id);
      const tail = withoutBanner(proc.output).slice(-12).join('\n');
      for (const [id, entry] of [...proc.pending]) {
        settle(proc, id, undefined, crashed(`${how} during '${entry.op}'`, tail, { op: entry.op, ...(signal ? { signal } : {}), ...(code === null ? {} : { exitCode: code }) }));
      }
    });
    hold(proc, false);
    return proc;
  }
}

/**
 * The worker script. `child.mjs` is plain JavaScript, so it runs unchanged from the source tree
 * (tests run TypeScript sources through vitest) and from a build; `tsc` does not copy `.mjs` files,
 * so from `dist/drivers/engines/xrt/` this falls back to the same file in the package's source
 * tree (`<package root>/drivers/engines/xrt/child.mjs`, the root being the folder whose
 * package.json says `"name": "aios"`). A build that ships without sources copies the file beside
 * worker.js, which is looked at first.
 */
export function resolveChildScript(from: string = import.meta.url): string {
  const here = path.dirname(fileURLToPath(from));
  const beside = path.join(here, 'child.mjs');
  if (existsSync(beside)) return beside;
  for (let dir = here; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'drivers', 'engines', 'xrt', 'child.mjs');
    if (isAiosRoot(dir) && existsSync(candidate)) return candidate;
    if (path.dirname(dir) === dir) break;
  }
  throw new DeviceUnavailableError('EAI_XRT_UNAVAILABLE', `the xrt worker script child.mjs was not found beside ${here} nor in the aios source tree`, 'reinstall aios; a build that ships only dist/ must copy drivers/engines/xrt/child.mjs to dist/drivers/engines/xrt/');
}

/** One worker process and what belongs to it: its requests and its output. */
interface Proc {
  readonly child: ChildProcess;
  readonly pending: Map<number, Pending>;
  output: string;
  /** Characters of output dropped from the front of `output`. */
  consumed: number;
  /** Why the engine killed it, when it did. */
  lastWords?: string;
  /** Reply marks seen per request id, one per output stream. */
  readonly marks: Map<number, number>;
  /** Failures waiting for their marks, so that what XRT printed for them has arrived. */
  readonly held: Map<number, { readonly error: WireError; readonly timer: NodeJS.Timeout }>;
}

interface Pending {
  readonly op: string;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: Error) => void;
  /** Position in the output stream when the request was sent: what XRT printed for it comes after. */
  readonly mark: number;
  readonly timer: NodeJS.Timeout;
}

function settle(proc: Proc, id: number, result: unknown, error?: Error): void {
  const entry = proc.pending.get(id);
  if (entry === undefined) return;
  proc.pending.delete(id);
  clearTimeout(entry.timer);
  if (proc.pending.size === 0) hold(proc, false);
  if (error) entry.reject(error);
  else entry.resolve(result);
}

/** Holds the event loop only while a request is pending, so an idle worker never keeps a CLI running. */
function hold(proc: Proc, busy: boolean): void {
  const { child } = proc;
  for (const h of [child, child.channel, child.stdout, child.stderr] as ({ ref?: () => void; unref?: () => void } | null | undefined)[]) {
    if (busy) h?.ref?.();
    else h?.unref?.();
  }
}

/**
 * A failure reply overtakes XRT's message about it (IPC and stderr are separate pipes), so the
 * child writes {@link REPLY_MARK} to stdout and stderr before replying, and a failure is settled
 * once both marks are read (or after a short grace, for a child that writes none).
 */
function holdFailure(proc: Proc, id: number, error: WireError): void {
  const timer = setTimeout(() => release(proc, id), 500);
  timer.unref();
  proc.held.set(id, { error, timer });
  if ((proc.marks.get(id) ?? 0) >= 2) release(proc, id);
}

function marked(proc: Proc, id: number): void {
  const seen = (proc.marks.get(id) ?? 0) + 1;
  proc.marks.set(id, seen);
  if (seen >= 2 && proc.held.has(id)) release(proc, id);
}

function release(proc: Proc, id: number): void {
  const held = proc.held.get(id);
  if (held === undefined) return;
  proc.held.delete(id);
  proc.marks.delete(id);
  clearTimeout(held.timer);
  settle(proc, id, undefined, new WorkerFailure(held.error, outputSince(proc, proc.pending.get(id)?.mark ?? 0)));
}

function outputSince(proc: Proc, mark: number): string {
  return proc.output
    .slice(Math.max(0, mark - proc.consumed))
    .split('\n')
    .filter((l) => !l.startsWith(REPLY_MARK))
    .join('\n')
    .trim();
}

function isAiosRoot(dir: string): boolean {
  try {
    return (JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: unknown }).name === 'aios';
  } catch {
    return false;
  }
}

/** XRT prints a build banner (version, hash, PID, host) before its first message; it says nothing about the failure. */
function withoutBanner(output: string): string[] {
  return output
    .split('\n')
    .map((l) => l.trimEnd())
    .filter((l) => l !== '' && !l.startsWith(REPLY_MARK) && !/^(XRT build version|Build hash|Build date|Git branch|PID|UID|HOST|EXE):|^\[\w{3} \w{3} .*\d{4} GMT\]$/u.test(l));
}

function crashed(how: string, tail: string, details: Record<string, unknown>): DeviceUnavailableError {
  return new DeviceUnavailableError(
    'EAI_XRT_CRASHED',
    `the XRT worker process ${how}${tail ? `; its last output:\n${tail}\n` : ''}`,
    'the engine starts a new worker on the next load; load the model again. If it happens again, check `dmesg` for xocl/zocl errors and that XCL_EMULATION_MODE is unset unless emulation is set up (emconfig.json, XILINX_XRT)',
    { details: { ...details, output: tail } },
  );
}
