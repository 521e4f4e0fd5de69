import { stat } from 'node:fs/promises';
import path from 'node:path';
import { SensorError } from '../../../../drivers/sensors/errors.js';
import { restarting, type Backoff } from '../../../../drivers/sensors/restart.js';
import type { Sensor } from '../../../../drivers/sensors/types.js';
import type { ConfigProblem, NodeContext } from '../../definition.js';

/**
 * Runs a sensor-backed source until its input ends or the pipeline stops. Every message goes out
 * on `port` with the sensor's own times, the node's name as origin, and a sequence number that
 * keeps counting across reopenings; `emit` is awaited, so a replay honours a `block` queue.
 *
 * A retryable SensorError (connection refused or dropped, interface down) is reported with
 * `ctx.warn` and the sensor reopened with exponential backoff. A failure that will not fix itself
 * (missing file or program, a truncated recording after its last complete message) is reported
 * once and ends the source normally: the rest of the pipeline keeps running. Anything else is a
 * bug and is rethrown for the executor to report. `report`, called when the sensor stops, may
 * return a note worth a warning (sentences with bad checksums, packets skipped).
 */
export async function runSensor<T>(ctx: NodeContext<unknown>, port: string, sensor: Sensor<T>, restart: Backoff, report?: () => string | undefined): Promise<void> {
  let seq = 0;
  try {
    const messages = restarting((signal) => sensor.messages(signal), restart, ctx.signal, ({ error, attempt, delayMs }) => {
      ctx.warn(`${error.code}: ${error.message}; retrying in ${delayMs} ms (failure ${attempt} in a row)`, error);
    });
    for await (const m of messages) {
      await ctx.emit(port, m.value, { sensorTimeNs: m.sensorTimeNs, arrivalMs: m.arrivalMs, origin: ctx.name, seq: seq++ });
    }
  } catch (error) {
    if (ctx.signal.aborted) return;
    if (!(error instanceof SensorError)) throw error;
    ctx.warn(`${error.code}: ${error.message}`, error);
  } finally {
    const note = report?.();
    if (note !== undefined) ctx.warn(note);
  }
}

/**
 * Validation shared by the recording/live sources: `params.file`, when given, names an existing
 * file (relative to the pipeline's folder), and the restart backoff is ordered.
 */
export async function checkSource(params: { readonly file?: string | undefined; readonly restart: Backoff }, baseDir: string, what: string): Promise<ConfigProblem[]> {
  const problems: ConfigProblem[] = [];
  if (params.restart.maxMs < params.restart.initialMs) problems.push({ path: ['params', 'restart', 'maxMs'], message: `maxMs (${params.restart.maxMs}) must be at least initialMs (${params.restart.initialMs})` });
  if (params.file === undefined) return problems;
  const resolved = path.resolve(baseDir, params.file);
  try {
    if (!(await stat(resolved)).isFile()) problems.push({ path: ['params', 'file'], message: `${what} recording ${resolved} is not a file` });
  } catch {
    problems.push({ path: ['params', 'file'], message: `${what} recording ${resolved} does not exist (relative paths resolve against the pipeline file's folder)` });
  }
  return problems;
}
