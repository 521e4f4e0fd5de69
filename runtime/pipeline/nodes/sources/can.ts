import path from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import { CandumpReplay, SocketCan } from '../../../../drivers/sensors/can.js';
import { defineNode } from '../../definition.js';
import { checkSource, runSensor } from './sensor-loop.js';
import { RestartParams } from './video.js';

const CanParams = Type.Object(
  {
    file: Type.Optional(Type.String({ minLength: 1, description: 'replay this `candump -l` log, relative to the pipeline file; omit to read a live SocketCAN interface' })),
    interface: Type.Optional(Type.String({ minLength: 1, description: 'live: the SocketCAN interface (default can0); replay: only frames logged on this interface (default all)' })),
    candump: Type.String({ default: 'candump', description: 'live: the candump program (can-utils)' }),
    realtime: Type.Boolean({ default: true, description: 'replay: at the recorded pace; false: as fast as the pipeline takes frames' }),
    queue: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 1024, description: 'live: frames held for a slow pipeline before the oldest is dropped' }),
    staleAfterMs: Type.Integer({ minimum: 0, default: 1000, description: 'live: warn when no frame arrives for this long (0: never, for buses quiet by design)' }),
    restart: RestartParams,
  },
  { additionalProperties: false },
);

export type CanSourceParams = Static<typeof CanParams>;

/**
 * `use: can` — CAN and CAN FD frames (`CanRecord`: a CanFrame plus remote/brs/esi flags), live
 * from SocketCAN through `candump -L` or replayed from a `candump -l` log: output `frames`.
 * Sensor time is the kernel's receive timestamp. Error frames are counted, not emitted.
 * Live: a missing or down interface is retried with backoff (it may come up); candump not
 * installed ends the source with a warning. Replay: returns at the end of the log.
 */
export const canSource = defineNode({
  use: 'can',
  role: 'source',
  description: 'CAN / CAN FD frames from SocketCAN (candump) or replayed from a candump log',
  params: CanParams,
  inputs: [],
  outputs: ['frames'],
  types() {
    return { frames: { kind: 'can' } };
  },
  async check(params, env) {
    return checkSource(params, env.baseDir, 'CAN');
  },
  async run(ctx) {
    const p = ctx.params;
    if (p.file !== undefined) {
      const replay = new CandumpReplay(path.resolve(ctx.baseDir, p.file), { speed: p.realtime ? 1 : 0, ...(p.interface === undefined ? {} : { interfaces: [p.interface] }) });
      await runSensor(ctx, 'frames', replay, p.restart, () => (replay.stats.badLines === 0 ? undefined : `skipped ${replay.stats.badLines} lines of ${p.file ?? ''} that are not candump log frames`));
      return;
    }
    const iface = p.interface ?? 'can0';
    const live = new SocketCan(iface, {
      candump: p.candump,
      capacity: p.queue,
      staleAfterMs: p.staleAfterMs,
      onStale: (silentMs) => ctx.warn(`no CAN frames on ${iface} for ${(silentMs / 1000).toFixed(1)} s: is the bus powered and the bitrate right? (\`ip -details -statistics link show ${iface}\`)`),
    });
    await runSensor(ctx, 'frames', live, p.restart);
  },
});
