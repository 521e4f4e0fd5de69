import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, describe, expect, it } from 'vitest';
import { CandumpReplay, parseCandumpLine, SocketCan, type CanRecord } from '../../../../drivers/sensors/can.js';
import type { SensorMessage } from '../../../../drivers/sensors/types.js';

const LOG = path.resolve(import.meta.dirname, '../../../fixtures/can/candump-sample.log');
const VCAN = setUpVcan('vcan_aios');
if (VCAN !== true) console.warn(`skipping the live SocketCAN test on a vcan interface: ${VCAN}`);

afterAll(() => {
  if (VCAN === true) spawnSync('ip', ['link', 'delete', 'vcan_aios']);
});

async function collect<T>(iterable: AsyncIterable<T>, until?: (items: T[]) => boolean): Promise<T[]> {
  const out: T[] = [];
  for await (const item of iterable) {
    out.push(item);
    if (until?.(out) === true) break;
  }
  return out;
}

const hex = (r: CanRecord): string => Buffer.from(r.data).toString('hex').toUpperCase();

describe('parseCandumpLine', () => {
  it('a classic frame: kernel timestamp to ns, interface, 11-bit id, data', () => {
    const parsed = parseCandumpLine('(1436509052.249713) vcan0 044#2A366C2A');
    expect(parsed).toEqual({ ok: true, timeNs: 1_436_509_052_249_713_000n, frame: { interface: 'vcan0', id: 0x044, extended: false, data: Uint8Array.from([0x2a, 0x36, 0x6c, 0x2a]) } });
  });

  it('29-bit ids, remote requests, CAN FD flags, DLC beyond 8, empty data', () => {
    const frame = (line: string): CanRecord | string => {
      const p = parseCandumpLine(line);
      return p.ok ? p.frame : p.reason;
    };
    expect(frame('(0.000001) can0 12345678#DEADBEEF')).toMatchObject({ id: 0x12345678, extended: true, data: Uint8Array.from([0xde, 0xad, 0xbe, 0xef]) });
    expect(frame('(0.000001) can0 123#R')).toEqual({ interface: 'can0', id: 0x123, extended: false, data: new Uint8Array(0), remote: true });
    expect(frame('(0.000001) can0 1ABCDEF0#R4')).toEqual({ interface: 'can0', id: 0x1abcdef0, extended: true, data: new Uint8Array(0), remote: true, dlc: 4 });
    expect(frame('(0.000001) can0 5A1##3112233445566778899AABBCC')).toMatchObject({ id: 0x5a1, fd: true, brs: true, esi: true, data: Uint8Array.from(Buffer.from('112233445566778899AABBCC', 'hex')) });
    expect(frame('(0.000001) can0 1F334455#1122334455667788_C')).toMatchObject({ dlc: 12, data: Uint8Array.from(Buffer.from('1122334455667788', 'hex')) });
    expect(frame('(0.000001) can0 333#')).toMatchObject({ id: 0x333, data: new Uint8Array(0) });
  });

  it('refuses error frames, CAN XL and what does not parse, saying which', () => {
    expect(parseCandumpLine('(1436509054.050952) vcan0 20000080#0000000000000000')).toEqual({ ok: false, reason: 'error-frame' });
    expect(parseCandumpLine('(1.000000) xcan0 242#80:00:00000000#11223344')).toEqual({ ok: false, reason: 'unsupported' });
    for (const bad of ['this line is not a frame', '(1.0) vcan0 800#00', '(1.0) vcan0 12#00', '(1.0) vcan0 123#0', '(1.0) vcan0 123#112233445566778899', '(1.0) vcan0 123##1' + '11'.repeat(9), '(1.0) vcan0 123#R9', '(1.0) vcan0 123#11_C', 'vcan0 123#11']) {
      expect([bad, parseCandumpLine(bad)]).toEqual([bad, { ok: false, reason: 'malformed' }]);
    }
  });
});

describe('candump log replay', () => {
  it('replays every frame with its logged time; counts the error frame and the bad lines', async () => {
    const replay = new CandumpReplay(LOG, { speed: 0 });
    const frames = await collect(replay.messages(new AbortController().signal));
    expect(replay.stats).toEqual({ frames: 12, errorFrames: 1, badLines: 2 });
    expect(frames.map((m) => `${m.value.interface} ${m.value.id.toString(16)} ${hex(m.value)}`)).toEqual([
      'vcan0 44 2A366C2A',
      'vcan0 f6 7ADFE07BD2',
      'vcan0 236 C3406B09F4C88036',
      'vcan0 6f1 98508676A32734',
      'vcan0 17f C7',
      'vcan0 12345678 DEADBEEF',
      'vcan0 123 ',
      'vcan0 1abcdef0 ',
      'vcan0 5a1 112233445566778899AABBCC',
      'can1 7ff 0102030405060708',
      'vcan0 1f334455 1122334455667788',
      'vcan0 333 ',
    ]);
    expect(frames[0]?.sensorTimeNs).toBe(1_436_509_052_249_713_000n);
  });

  it('keeps the recorded pace (the first five frames span 0.8 s); selects one interface', async () => {
    const start = performance.now();
    const five = await collect(new CandumpReplay(LOG).messages(new AbortController().signal), (f) => f.length === 5);
    expect(performance.now() - start).toBeGreaterThanOrEqual(790);
    expect(five).toHaveLength(5);
    const can1 = await collect(new CandumpReplay(LOG, { speed: 0, interfaces: ['can1'] }).messages(new AbortController().signal));
    expect(can1.map((m) => m.value.id)).toEqual([0x7ff]);
  });

  it('a missing log is EAI_SENSOR_NOT_FOUND, not retryable', async () => {
    await expect(collect(new CandumpReplay('/nonexistent/candump.log').messages(new AbortController().signal))).rejects.toMatchObject({ code: 'EAI_SENSOR_NOT_FOUND', retryable: false });
  });
});

describe('live SocketCAN through candump', () => {
  const fake = fakeCandump();
  afterAll(() => rmSync(fake.dir, { recursive: true, force: true }));

  it('reads the frames candump prints, with their kernel timestamps; ends candump when done', async () => {
    const can = new SocketCan('vcan0', { candump: fake.program });
    const frames = await collect(can.messages(new AbortController().signal), (f) => f.length === 3);
    const pid = Number(readFileSync(path.join(fake.dir, 'pid-vcan0'), 'utf8'));
    await until(() => !alive(pid), 2000);
    expect(alive(pid)).toBe(false);
    expect(frames.map((m) => [m.sensorTimeNs, m.value.id, hex(m.value)])).toEqual([
      [1_700_000_000_000_001_000n, 0x100, '01'],
      [1_700_000_000_000_002_000n, 0x200, '0202'],
      [1_700_000_000_000_003_000n, 0x18daf110, '030303'],
    ]);
    expect(can.stats).toMatchObject({ frames: 3, errorFrames: 1, badLines: 0 });
  });

  it('candump exiting ends the stream with a retryable error; a missing interface names the fix', async () => {
    const gone = await collect(new SocketCan('exit3', { candump: fake.program }).messages(new AbortController().signal)).catch((e: unknown) => e);
    expect(gone).toMatchObject({ code: 'EAI_SENSOR_STREAM_ENDED', retryable: true, message: 'candump on exit3 exited with code 3: bus exploded' });
    const missing = await collect(new SocketCan('nodev0', { candump: fake.program }).messages(new AbortController().signal)).catch((e: unknown) => e);
    expect(missing).toMatchObject({ code: 'EAI_SENSOR_NOT_FOUND', retryable: true, message: expect.stringContaining('sudo ip link add dev nodev0 type vcan') as unknown });
    const down = await collect(new SocketCan('down0', { candump: fake.program }).messages(new AbortController().signal)).catch((e: unknown) => e);
    expect(down).toMatchObject({ code: 'EAI_SENSOR_NOT_FOUND', message: expect.stringContaining('sudo ip link set down0 up') as unknown });
  });

  it('candump not installed: EAI_SENSOR_NOT_FOUND, not retryable, saying which package', async () => {
    const error = await collect(new SocketCan('can0', { candump: '/nonexistent/candump' }).messages(new AbortController().signal)).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'EAI_SENSOR_NOT_FOUND', retryable: false, message: expect.stringContaining('apt install can-utils') as unknown });
  });

  it('a silent bus is reported stale; aborting stops candump', async () => {
    const stale: number[] = [];
    const abort = new AbortController();
    const reading = collect(new SocketCan('quiet0', { candump: fake.program, staleAfterMs: 150, onStale: (ms) => stale.push(ms) }).messages(abort.signal));
    await new Promise((resolve) => setTimeout(resolve, 700));
    expect(stale).toHaveLength(1);
    abort.abort();
    expect(await reading).toEqual([]);
  });

  it.skipIf(VCAN !== true)('on a real vcan interface: frames sent with cansend arrive through candump', async () => {
    const can = new SocketCan('vcan_aios', { staleAfterMs: 0 });
    const abort = new AbortController();
    const got: SensorMessage<CanRecord>[] = [];
    const reading = (async () => {
      for await (const m of can.messages(abort.signal)) {
        got.push(m);
        if (got.length === 3) abort.abort();
      }
    })();
    await new Promise((resolve) => setTimeout(resolve, 300));
    const before = BigInt(Date.now()) * 1_000_000n;
    for (const frame of ['123#DEADBEEF', '1F334455#0102', '5A1##1112233445566778899AABBCC']) spawnSync('cansend', ['vcan_aios', frame]);
    await reading;
    expect(got.map((m) => [m.value.id, m.value.extended, m.value.fd ?? false, hex(m.value)])).toEqual([
      [0x123, false, false, 'DEADBEEF'],
      [0x1f334455, true, false, '0102'],
      [0x5a1, false, true, '112233445566778899AABBCC'],
    ]);
    expect(got.every((m) => m.sensorTimeNs >= before - 1_000_000_000n)).toBe(true);
  });
});

/** A stand-in for candump: prints log-format frames for vcan0, fails like candump does for other names. */
function fakeCandump(): { program: string; dir: string } {
  const dir = mkdtempSync(path.join(tmpdir(), 'aios-candump-'));
  const program = path.join(dir, 'candump');
  writeFileSync(
    program,
    `#!/usr/bin/env node
const [flag, iface] = process.argv.slice(2);
import('node:fs').then((fs) => fs.writeFileSync(process.argv[1].replace(/candump$/, 'pid-' + iface), String(process.pid)));
if (flag !== '-L') { process.stderr.write('expected -L'); process.exit(2); }
if (iface === 'nodev0') { process.stderr.write('SIOCGIFINDEX: No such device\\n'); process.exit(1); }
if (iface === 'down0') { process.stderr.write('read: Network is down\\n'); process.exit(1); }
if (iface === 'exit3') { process.stderr.write('bus exploded\\n'); process.exit(3); }
if (iface === 'vcan0') {
  process.stdout.write('(1700000000.000001) vcan0 100#01\\n');
  process.stdout.write('(1700000000.000002) vcan0 200#0202\\n(1700000000.000002) vcan0 20000004#0000000000000000\\n');
  setTimeout(() => process.stdout.write('(1700000000.000003) vcan0 18DAF110#030303\\n'), 50);
}
setInterval(() => {}, 1000);
process.on('SIGTERM', () => process.exit(0));
`,
  );
  chmodSync(program, 0o755);
  return { program, dir };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function until(condition: () => boolean, timeoutMs: number): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!condition() && performance.now() < end) await new Promise((resolve) => setTimeout(resolve, 20));
}

/** Creates a vcan interface; true, or why it cannot (no vcan module, not root, no ip or cansend). */
function setUpVcan(name: string): true | string {
  if (spawnSync('cansend', ['--help']).error !== undefined) return 'cansend is not installed (apt-get install -y can-utils)';
  spawnSync('ip', ['link', 'delete', name]);
  const add = spawnSync('ip', ['link', 'add', 'dev', name, 'type', 'vcan'], { encoding: 'utf8' });
  if (add.error !== undefined) return `ip is not installed (${add.error.message})`;
  if (add.status !== 0) return `cannot create ${name}: ${add.stderr.trim()} (needs root and the vcan kernel module: modprobe vcan)`;
  // MTU 72: a CAN FD interface, so the FD frame can be sent too.
  const up = spawnSync('ip', ['link', 'set', name, 'mtu', '72', 'up'], { encoding: 'utf8' });
  if (up.status !== 0) return `cannot bring ${name} up: ${up.stderr.trim()}`;
  return true;
}
