import { Type } from '@sinclair/typebox';
import type { AudioFrame, CanFrame, GnssFix, ImageFrame, PointCloud } from '../../../../drivers/sensors/types.js';
import { defineNode } from '../../definition.js';
import { candump, detectionName, payloadKind, stringifyJson } from '../../encode.js';
import type { Detections } from '../../payloads.js';
import { ProblemLog, SINK_INPUT, errorText, flowName, messageJson } from './shared.js';

const StdoutParams = Type.Object(
  {
    format: Type.Union([Type.Literal('text'), Type.Literal('json')], { default: 'text', description: 'text: one short human line per message; json: one JSON object per line, as the file sink writes' }),
  },
  { additionalProperties: false },
);

/** What the stdout sink holds while it runs. */
export interface StdoutSinkState {
  readonly problems: ProblemLog;
  printed: number;
}

/**
 * `stdout`: prints one line per message. `text` (the default) is for people watching a pipeline:
 * `12:00:01.234 detect.boxes 2 faces (0.97, 0.81)` (local sensor time, the flow, a summary:
 * detections with their scores, tensor shapes, image sizes, fixes, CAN frames as candump writes
 * them); `json` is the JSON-lines form the file sink writes, for piping into jq.
 *
 * Waits for stdout to drain when its buffer is full, so a slow terminal or a paused pipe slows
 * the sink (and its queue policy decides) instead of growing memory. Bad payloads are counted
 * and reported through `ctx.warn`.
 */
export const stdoutSink = defineNode({
  use: 'stdout',
  role: 'sink',
  description: 'Prints one line per message: a human summary, or JSON',
  params: StdoutParams,
  inputs: [SINK_INPUT],
  outputs: [],
  async start(ctx): Promise<StdoutSinkState> {
    return { problems: new ProblemLog((m, cause) => ctx.warn(m, cause)), printed: 0 };
  },
  async process(port, message, ctx, state) {
    const flow = flowName(port, message);
    let line: string;
    try {
      line = ctx.params.format === 'json' ? JSON.stringify(messageJson(flow, message)) : `${clock(message.sensorTimeNs)} ${flow} ${summarize(message.value)}`;
    } catch (err) {
      state.problems.report('encode', `${ctx.name}: cannot print a message from ${flow}: ${errorText(err)}`, err);
      return;
    }
    if (!process.stdout.write(`${line}\n`)) await new Promise<void>((resolve) => process.stdout.once('drain', resolve));
    state.printed++;
  },
});

/** A short human description of a payload (see `stdoutSink`). */
export function summarize(value: unknown): string {
  switch (payloadKind(value)) {
    case 'detections':
      return detections(value as Detections);
    case 'tensor':
      return shapeOf(value as { dtype: string; shape: readonly number[] });
    case 'tensors':
      return Object.entries(value as Record<string, { dtype: string; shape: readonly number[] }>).map(([k, t]) => `${k} ${shapeOf(t)}`).join(', ');
    case 'image': {
      const f = value as ImageFrame;
      return `image ${f.width}×${f.height} ${f.format}`;
    }
    case 'audio': {
      const a = value as AudioFrame;
      return `audio ${Math.floor(a.samples.length / Math.max(1, a.channels))} samples × ${a.channels} ch @ ${a.sampleRate} Hz`;
    }
    case 'pointcloud': {
      const p = value as PointCloud;
      return `pointcloud ${p.count} points in ${p.frameId}`;
    }
    case 'gnss':
      return gnss(value as GnssFix);
    case 'can': {
      const c = value as CanFrame;
      return `${c.interface} ${candump(c)}`;
    }
    default: {
      const classes = (value as { classes?: unknown } | null)?.classes;
      if (Array.isArray(classes) && classes.every((c) => typeof (c as { score?: unknown }).score === 'number')) {
        return (classes as { id?: number; label?: string; score: number }[]).slice(0, SCORES_SHOWN).map((c) => `${c.label ?? `class ${c.id ?? '?'}`} ${c.score.toFixed(2)}`).join(', ') || 'no classes';
      }
      // A fused record (sync): describe each member, so a frame's pixels do not fill the line.
      if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
        const entries = Object.entries(value as Record<string, unknown>);
        if (entries.length > 0 && entries.some(([, v]) => payloadKind(v) !== 'json')) return entries.map(([k, v]) => `${k}: ${summarize(v)}`).join(' | ');
      }
      const text = stringifyJson(value);
      return text.length > 160 ? `${text.slice(0, 157)}...` : text;
    }
  }
}

const SCORES_SHOWN = 5;

function detections(d: Detections): string {
  const scores = d.boxes.slice(0, SCORES_SHOWN).map((b) => (Number.isFinite(b.score) ? b.score.toFixed(2) : '?'));
  const more = d.boxes.length > SCORES_SHOWN ? ', ...' : '';
  const labels = new Set(d.boxes.map(detectionName));
  const n = d.boxes.length;
  if (labels.size > 1) {
    const each = d.boxes.slice(0, SCORES_SHOWN).map((b, i) => `${detectionName(b) ?? '?'} ${scores[i]}`);
    return `${n} detections (${each.join(', ')}${more})`;
  }
  const label = [...labels][0] ?? 'box';
  const noun = n === 1 ? label : `${label}${/(s|x|ch|sh)$/u.test(label) ? 'es' : 's'}`;
  return n === 0 ? `0 ${noun}` : `${n} ${noun} (${scores.join(', ')}${more})`;
}

function shapeOf(t: { dtype: string; shape: readonly number[] }): string {
  return `${t.dtype}[${t.shape.join(', ')}]`;
}

function gnss(f: GnssFix): string {
  const parts = [`fix ${f.latitude.toFixed(6)}, ${f.longitude.toFixed(6)}`];
  if (f.altitude !== undefined) parts.push(`${f.altitude.toFixed(1)} m`);
  if (f.satellites !== undefined) parts.push(`${f.satellites} sats`);
  if (f.hdop !== undefined) parts.push(`hdop ${f.hdop}`);
  return parts.join(', ');
}

/** Local wall-clock time of day of a sensor time, to the millisecond: `12:00:01.234`. */
function clock(ns: bigint): string {
  const d = new Date(Number(ns / 1_000_000n));
  const two = (n: number): string => String(n).padStart(2, '0');
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, '0')}`;
}
