import { Type, type Static } from '@sinclair/typebox';
import { defineNode, PortTypeMismatch, type ConfigProblem, type Envelope } from '../../definition.js';

/** The fixed input ports of `sync`; a pipeline connects the ones it lists in `params.inputs`. */
export const SYNC_PORTS = ['a', 'b', 'c', 'd'] as const;
export type SyncPort = (typeof SYNC_PORTS)[number];

const Port = Type.Union(SYNC_PORTS.map((p) => Type.Literal(p)));
const Params = Type.Object(
  {
    inputs: Type.Array(Port, { minItems: 2, uniqueItems: true, default: ['a', 'b'], description: 'the ports fed, of a, b, c, d' }),
    reference: Type.Optional(Port),
    tolerance: Type.Number({ minimum: 0, default: 50, description: 'largest sensor-time gap to the reference message, milliseconds' }),
    policy: Type.Union([Type.Literal('nearest'), Type.Literal('latest')], { default: 'nearest', description: 'nearest: wait for the closest message of each input; latest: take the newest so far, never wait' }),
    buffer: Type.Integer({ minimum: 1, default: 30, description: 'messages kept per input; the oldest is dropped past this' }),
  },
  { additionalProperties: false },
);
type SyncParams = Static<typeof Params>;

/** A message `sync` emits: the reference's times and origin, one value per input. */
export interface Fused {
  readonly from: Omit<Envelope, 'value'>;
  readonly value: Readonly<Partial<Record<SyncPort, unknown>>>;
}

export interface SyncStats {
  readonly fused: number;
  /** Messages dropped without being fused, per input: no partner within tolerance, never the nearest, or pushed out of a full buffer. */
  readonly unmatched: Readonly<Partial<Record<SyncPort, number>>>;
}

/**
 * Aligns messages from several inputs by sensor time. Each message of the reference input (the
 * first of `inputs` unless `reference` says) is fused with one message from every other input:
 *
 * - `nearest`: the message closest in sensor time, once it is known (a message at or after the
 *   reference time has arrived on that input, since later ones are only farther). Adds at most one
 *   partner period of latency; exact for streams that arrive in time order per input.
 * - `latest`: the newest message so far, at once; for a slow reference next to fast partners.
 *
 * A partner farther than `tolerance` from the reference time means no fused message: the
 * reference message is dropped and counted. A partner message may serve several reference
 * messages (a 10 Hz partner of a 30 Hz reference is reused). Buffers are bounded by `buffer`
 * per input, dropping the oldest. Nothing is interpolated: values pass through as they are.
 * Not thread-safe and needs none: the stage calls it for one message at a time.
 */
export class Synchronizer {
  private readonly buffers = new Map<SyncPort, Envelope[]>();
  private readonly dropped = new Map<SyncPort, number>();
  private readonly used = new WeakSet<Envelope>();
  private readonly toleranceNs: bigint;
  private readonly reference: SyncPort;
  private fused = 0;

  constructor(private readonly params: Pick<SyncParams, 'inputs' | 'reference' | 'tolerance' | 'policy' | 'buffer'>) {
    this.reference = params.reference ?? (params.inputs[0] as SyncPort);
    this.toleranceNs = BigInt(Math.round(params.tolerance * 1e6));
    for (const p of params.inputs) this.buffers.set(p, []);
  }

  /** Takes one message; returns the fused messages it completes (zero, one, or several in time order). */
  push(port: SyncPort, message: Envelope): Fused[] {
    const buffer = this.buffers.get(port);
    if (buffer === undefined) return [];
    insertByTime(buffer, message);
    if (buffer.length > this.params.buffer) this.discard(port, buffer.splice(0, buffer.length - this.params.buffer));
    if (this.params.policy === 'latest') return port === this.reference ? this.latest() : [];
    return this.nearest();
  }

  stats(): SyncStats {
    return { fused: this.fused, unmatched: Object.fromEntries(this.dropped) };
  }

  private nearest(): Fused[] {
    const out: Fused[] = [];
    const refs = this.buffers.get(this.reference) as Envelope[];
    for (let ref = refs[0]; ref !== undefined; ref = refs[0]) {
      const t = ref.sensorTimeNs;
      const chosen: [SyncPort, Envelope][] = [];
      let ready = true;
      let matched = true;
      for (const [port, buffer] of this.buffers) {
        if (port === this.reference) continue;
        // Older than t - tolerance: too old for this reference and for every later one.
        const stale = buffer.findIndex((m) => m.sensorTimeNs >= t - this.toleranceNs);
        this.discard(port, buffer.splice(0, stale < 0 ? buffer.length : stale));
        const after = buffer.findIndex((m) => m.sensorTimeNs >= t);
        if (after < 0) {
          ready = false; // the nearest may still come
          break;
        }
        const before = after > 0 ? buffer[after - 1] : undefined;
        const next = buffer[after] as Envelope;
        const best = before !== undefined && t - before.sensorTimeNs <= next.sensorTimeNs - t ? before : next;
        if (abs(best.sensorTimeNs - t) > this.toleranceNs) matched = false;
        else chosen.push([port, best]);
        // Messages before the chosen one can be nearest to no later reference.
        this.discard(port, buffer.splice(0, buffer.indexOf(best)));
      }
      if (!ready) break;
      refs.shift();
      if (matched) out.push(this.emit(ref, chosen));
      else this.discard(this.reference, [ref]);
    }
    return out;
  }

  private latest(): Fused[] {
    const refs = this.buffers.get(this.reference) as Envelope[];
    const ref = refs.pop();
    if (ref === undefined) return [];
    refs.length = 0;
    const t = ref.sensorTimeNs;
    const chosen: [SyncPort, Envelope][] = [];
    for (const [port, buffer] of this.buffers) {
      if (port === this.reference) continue;
      let best: Envelope | undefined;
      for (const m of buffer) if (m.sensorTimeNs <= t + this.toleranceNs) best = m;
      if (best === undefined || abs(best.sensorTimeNs - t) > this.toleranceNs) {
        this.discard(this.reference, [ref]);
        return [];
      }
      chosen.push([port, best]);
      // Keep the chosen one (it may serve the next reference too) and what came after it.
      this.discard(port, buffer.splice(0, buffer.indexOf(best)));
    }
    return [this.emit(ref, chosen)];
  }

  private emit(ref: Envelope, partners: readonly [SyncPort, Envelope][]): Fused {
    this.fused++;
    const value: Partial<Record<SyncPort, unknown>> = { [this.reference]: ref.value };
    for (const [port, m] of partners) {
      value[port] = m.value;
      this.used.add(m);
    }
    const { value: _ignored, ...from } = ref;
    return { from, value };
  }

  /** Counts messages leaving a buffer; those already fused into an output were not lost. */
  private discard(port: SyncPort, messages: readonly Envelope[]): void {
    const lost = messages.filter((m) => !this.used.has(m)).length;
    if (lost > 0) this.dropped.set(port, (this.dropped.get(port) ?? 0) + lost);
  }
}

/**
 * `sync`: fuses messages from up to four inputs (ports `a`, `b`, `c`, `d`; `params.inputs` says
 * which are fed) by sensor time within `tolerance` ms, as {@link Synchronizer} describes.
 * `out` carries `{ a: value, b: value, ... }` (PortType `any`: a record of the inputs' values)
 * with the reference message's sensor time, arrival time, origin and sequence number.
 */
export const syncStage = defineNode({
  use: 'sync',
  role: 'stage',
  description: 'align messages from several sensors by sensor time and emit them together',
  params: Params,
  inputs: SYNC_PORTS,
  outputs: ['out'],

  types(params, inputs) {
    for (const port of Object.keys(inputs)) {
      if (!(params.inputs as readonly string[]).includes(port)) throw new PortTypeMismatch(port, `sync's port '${port}' is fed but not listed in params.inputs (${params.inputs.join(', ')})`);
    }
    const missing = params.inputs.find((p) => inputs[p] === undefined);
    if (missing !== undefined) throw new PortTypeMismatch(missing, `sync lists input '${missing}' but nothing flows into it: add a flow '<node> -> <this stage>.${missing}'`);
    return { out: { kind: 'any' } };
  },

  async check(params): Promise<readonly ConfigProblem[]> {
    if (params.reference !== undefined && !params.inputs.includes(params.reference)) return [{ path: ['params', 'reference'], message: `reference '${params.reference}' is not one of the inputs (${params.inputs.join(', ')})` }];
    return [];
  },

  async start(ctx): Promise<Synchronizer> {
    return new Synchronizer(ctx.params);
  },

  async process(port, message, ctx, state) {
    const reference = ctx.params.reference ?? (ctx.params.inputs[0] as SyncPort);
    const before = state.stats().unmatched[reference] ?? 0;
    for (const fused of state.push(port as SyncPort, message)) await ctx.emit('out', fused.value, fused.from);
    const after = state.stats().unmatched[reference] ?? 0;
    if (after > before) ctx.warn(`${after} reference messages dropped so far: no message on every other input within ${ctx.params.tolerance} ms (raise tolerance, or check the sensors' clocks)`);
  },
});

function insertByTime(buffer: Envelope[], message: Envelope): void {
  let i = buffer.length;
  while (i > 0 && (buffer[i - 1] as Envelope).sensorTimeNs > message.sensorTimeNs) i--;
  buffer.splice(i, 0, message);
}

function abs(v: bigint): bigint {
  return v < 0n ? -v : v;
}
