// A recorder in its own process, for the crash tests. argv: <path> <mode>
//   flush: writes a message every 2 ms and calls flush() after every 10th, printing
//          `durable <n>` once the first n messages are on their way to disk; runs until killed.
//   idle:  writes 25 messages, prints `written 25`, then idles (the chunk timer must close the chunk).
//   term:  writes messages until SIGTERM, then close() and exit 0, printing `closed <n>`.
import { McapRecorder } from '../../../../../drivers/recording/mcap-writer.ts';

const [file, mode] = process.argv.slice(2);
const recorder = await McapRecorder.open({ path: file, chunkDurationMs: 100, fsyncIntervalMs: null });
const message = (i) => ({
  topic: '/gnss/fix',
  schema: { name: 'test.Count', encoding: 'jsonschema', data: '{"type":"object"}' },
  messageEncoding: 'json',
  data: new TextEncoder().encode(JSON.stringify({ i })),
  logTimeNs: 1_700_000_000_000_000_000n + BigInt(i) * 1_000_000n,
  publishTimeNs: BigInt(Date.now()) * 1_000_000n,
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let n = 0;
let stopping = false;
process.on('SIGTERM', async () => {
  stopping = true;
  await recorder.close();
  process.stdout.write(`closed ${n}\n`);
  process.exit(0);
});
if (mode === 'idle') {
  for (; n < 25; n++) await recorder.write(message(n));
  process.stdout.write(`written ${n}\n`);
  setInterval(() => {}, 1000);
} else {
  process.stdout.write('ready\n');
  while (!stopping) {
    await recorder.write(message(n++));
    if (mode === 'flush' && n % 10 === 0) {
      await recorder.flush();
      process.stdout.write(`durable ${n}\n`);
    }
    await sleep(2);
  }
}
