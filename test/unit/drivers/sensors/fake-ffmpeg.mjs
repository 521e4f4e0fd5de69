#!/usr/bin/env node
// A stand-in for ffmpeg in tests of the frame reader: ignores ffmpeg's own options and acts out
// the behaviour named by its first non-option argument.
const args = process.argv.slice(2).filter((a) => !['-hide_banner', '-nostdin', '-nostats'].includes(a));
const [mode = '', a = '0', b = '0'] = args;

/** Writes `bytes` in pieces of 777 so frames straddle chunk boundaries; resolves when flushed. */
function write(bytes) {
  return new Promise((resolve) => {
    let at = 0;
    const next = () => {
      while (at < bytes.length) {
        const piece = bytes.subarray(at, at + 777);
        at += piece.length;
        if (!process.stdout.write(piece)) return void process.stdout.once('drain', next);
      }
      resolve();
    };
    next();
  });
}

const frame = (i, size) => new Uint8Array(size).fill(i & 0xff);

switch (mode) {
  case 'frames': {
    // `frames N SIZE`: N frames, frame i filled with i mod 256, then exit 0.
    for (let i = 0; i < Number(a); i++) await write(frame(i, Number(b)));
    break;
  }
  case 'bytes': {
    // `bytes N`: the bytes 0, 1, 2, ... N-1, then exit 0.
    await write(Uint8Array.from({ length: Number(a) }, (_, i) => i & 0xff));
    break;
  }
  case 'fail': {
    // `fail CODE MESSAGE`: one frame of 4 bytes, some noise, the message, then exit CODE.
    await write(frame(7, 4));
    process.stderr.write('Input #0, something\n  Stream #0:0: Video\n' + b + '\nConversion failed!\n');
    process.exitCode = Number(a);
    break;
  }
  case 'hang': {
    setInterval(() => undefined, 1000);
    break;
  }
  case 'ignore-term': {
    // Writes one frame, then ignores SIGTERM: only SIGKILL ends it.
    process.on('SIGTERM', () => undefined);
    await write(frame(1, Number(a)));
    setInterval(() => undefined, 1000);
    break;
  }
  default:
    process.stderr.write(`fake-ffmpeg: unknown mode '${mode}'\n`);
    process.exitCode = 2;
}
