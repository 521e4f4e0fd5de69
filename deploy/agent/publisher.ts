import type { MqttClient } from 'mqtt';
import type { Spool, SpoolRecord } from '../fleet/spool.js';

/**
 * Drains the spool to the broker: records in spool order, at most `window` QoS 1 publishes
 * unacknowledged at once (mqtt.js itself puts no cap on them, and a spool that filled during an
 * outage must not flood the broker when the link returns), issuing nothing while disconnected.
 * The spool is acknowledged up to the longest prefix the broker has acknowledged, so after a
 * crash it replays from the first record not known delivered (at least once; the controller drops
 * duplicates by sequence).
 */
export interface PublisherOptions {
  readonly window: number;
  readonly log: (line: Record<string, unknown>) => void;
}

export class Publisher {
  readonly #spool: Spool;
  readonly #client: MqttClient;
  readonly #options: PublisherOptions;
  readonly #abort = new AbortController();
  readonly #inFlight = new Set<number>();
  readonly #acked = new Set<number>();
  /** Records whose publish failed: sent again before newer ones, so the acknowledged prefix can grow. */
  readonly #retry: SpoolRecord[] = [];
  #loop: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  #published = 0;

  constructor(spool: Spool, client: MqttClient, options: PublisherOptions) {
    this.#spool = spool;
    this.#client = client;
    this.#options = options;
    client.on('connect', () => this.#wakeUp());
  }

  get published(): number {
    return this.#published;
  }

  start(): void {
    this.#loop ??= this.#run().catch((error: unknown) => {
      if (!this.#abort.signal.aborted) this.#options.log({ msg: 'spool publisher stopped', error: error instanceof Error ? error.message : String(error) });
    });
  }

  /** Stops taking records; waits (up to 5 s) for those in flight, then makes the acks durable. */
  async stop(): Promise<void> {
    this.#abort.abort();
    this.#wakeUp();
    const deadline = Date.now() + 5000;
    while (this.#inFlight.size > 0 && this.#client.connected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await this.#loop;
    await this.#spool.flush().catch(() => undefined);
  }

  async #run(): Promise<void> {
    const signal = this.#abort.signal;
    for await (const record of this.#spool.replay({ follow: true, signal })) {
      const copy = { ...record, payload: Buffer.from(record.payload) };
      for (;;) {
        while (!signal.aborted && (!this.#client.connected || this.#inFlight.size >= this.#options.window)) await this.#sleep();
        if (signal.aborted) return;
        const retry = this.#retry.shift();
        if (retry === undefined) break;
        this.#send(retry);
      }
      this.#send(copy);
    }
  }

  #send(record: SpoolRecord): void {
    const seq = record.seq;
    this.#inFlight.add(seq);
    // `record.payload` is a copy (see #run): the spool reuses its read buffers, and mqtt.js keeps
    // the payload until the broker acknowledges it (re-sending it after a reconnect).
    this.#client.publish(record.topic, record.payload as Buffer, { qos: record.qos }, (error) => {
      this.#inFlight.delete(seq);
      if (error !== undefined && error !== null) {
        this.#options.log({ msg: 'publish failed; will retry', seq, error: error.message });
        if (!this.#abort.signal.aborted) this.#retry.push(record);
      } else {
        this.#published++;
        this.#acked.add(seq);
        this.#advance();
      }
      this.#wakeUp();
    });
  }

  /** Acknowledges the spool up to the last record before the oldest one still in flight. */
  #advance(): void {
    const pending = [...this.#inFlight, ...this.#retry.map((r) => r.seq)];
    const oldest = pending.length === 0 ? Number.POSITIVE_INFINITY : Math.min(...pending);
    let upTo = -1;
    for (const seq of this.#acked) if (seq < oldest && seq > upTo) upTo = seq;
    if (upTo < 0) return;
    for (const seq of this.#acked) if (seq <= upTo) this.#acked.delete(seq);
    try {
      this.#spool.ack(upTo);
    } catch {
      // The spool was closed under us (stopping): the records replay next time.
    }
  }

  #sleep(): Promise<void> {
    return new Promise((resolve) => {
      this.#wake = resolve;
      setTimeout(resolve, 500).unref();
    });
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}
