/**
 * Reusable frame buffers carved from one SharedArrayBuffer, so frames can go to worker threads
 * without a copy and a stream never allocates per frame.
 *
 * Ownership: `take` hands a free buffer to the producer; `deliver` marks it handed to the
 * consumer; a delivered buffer becomes free again once `hold` later buffers have been delivered,
 * so a frame stays intact while it is one of the `hold` newest the consumer has received. `release` returns a
 * buffer that was never delivered (a dropped or unfinished frame). `hold + spare` buffers exist,
 * `spare` covering the producer's frame in progress and its queue. Not thread-safe: one producer
 * and one consumer on the same event loop.
 */
export class FrameRing {
  readonly frameBytes: number;
  private readonly free: Uint8Array[] = [];
  private readonly held: Uint8Array[] = [];

  constructor(
    frameBytes: number,
    readonly hold: number,
    spare: number,
  ) {
    this.frameBytes = frameBytes;
    const count = hold + spare;
    const shared = new SharedArrayBuffer(frameBytes * count);
    for (let i = count - 1; i >= 0; i--) this.free.push(new Uint8Array(shared, i * frameBytes, frameBytes));
  }

  take(): Uint8Array {
    const buffer = this.free.pop();
    // Unreachable while callers keep at most `spare` buffers taken or queued: a bug, not input.
    if (buffer === undefined) throw new Error('FrameRing exhausted: more frames in flight than its spare buffers');
    return buffer;
  }

  deliver(buffer: Uint8Array): void {
    this.held.push(buffer);
    if (this.held.length > this.hold) this.free.push(this.held.shift() as Uint8Array);
  }

  release(buffer: Uint8Array): void {
    this.free.push(buffer);
  }
}
