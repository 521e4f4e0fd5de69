/**
 * Runs tasks one at a time in call order, for engines whose native runtime is not reentrant (a
 * TFLite interpreter, a tfjs graph with per-run state). `push` is synchronous up to the enqueue,
 * so calls made in one tick run in that order; a failing task does not stop the ones after it.
 */
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();

  push<T>(task: () => T | Promise<T>): Promise<T> {
    const result = this.tail.then(task);
    this.tail = result.catch(() => undefined);
    return result;
  }

  /** Resolves once every task pushed so far has settled. */
  async drain(): Promise<void> {
    await this.tail;
  }
}
