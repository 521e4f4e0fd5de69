import { describe, expect, it } from 'vitest';
import { ProblemLog, arrivalWallNs, durationMs, flowName } from '../../../../../../runtime/pipeline/nodes/sinks/shared.js';

describe('ProblemLog', () => {
  it('reports a kind at most once per interval, saying how many happened since', () => {
    let now = 0;
    const warned: string[] = [];
    const log = new ProblemLog((m) => warned.push(m), 10_000, () => now);
    log.report('encode', 'bad frame');
    for (let i = 0; i < 29; i++) {
      now += 100;
      log.report('encode', 'bad frame');
    }
    log.report('write', 'disk full');
    now = 10_001;
    log.report('encode', 'bad frame');
    expect(warned).toEqual(['bad frame', 'disk full', 'bad frame (30 times since the last report)']);
    expect(log.count('encode')).toBe(31);
    expect(log.count()).toBe(32);
    expect(log.count('other')).toBe(0);
  });
});

describe('sink helpers', () => {
  it('names a message by its flow, or by its origin when the executor passes the input name', () => {
    expect(flowName('detect.boxes', { origin: 'camera' })).toBe('detect.boxes');
    expect(flowName('in', { origin: 'camera' })).toBe('camera');
  });

  it('reads pipeline durations', () => {
    expect([durationMs(250), durationMs('250us'), durationMs('50ms'), durationMs('1.5s'), durationMs('2m')]).toEqual([250, 0.25, 50, 1500, 120_000]);
    expect(() => durationMs('5 hours')).toThrow(/not a duration/u);
  });

  it('turns a performance.now() arrival into wall-clock nanoseconds', () => {
    const wall = arrivalWallNs(performance.now());
    const diffMs = Number(wall / 1_000_000n) - Date.now();
    expect(Math.abs(diffMs)).toBeLessThan(50);
    expect(wall % 1000n).toBe(0n);
  });
});
