import type { GnssFix } from './types.js';

/** GGA: position fix data. Times are milliseconds past UTC midnight. */
export interface NmeaGga {
  readonly type: 'GGA';
  readonly talker: string;
  readonly timeOfDayMs?: number;
  readonly latitude?: number;
  readonly longitude?: number;
  /** 0 invalid, 1 GPS, 2 DGPS, 4 RTK fixed, 5 RTK float, 6 estimated. */
  readonly quality: number;
  readonly satellites?: number;
  readonly hdop?: number;
  /** Above mean sea level, metres. */
  readonly altitude?: number;
}

/** RMC: recommended minimum: time, date, validity, position, speed and course over ground. */
export interface NmeaRmc {
  readonly type: 'RMC';
  readonly talker: string;
  readonly timeOfDayMs?: number;
  /** UTC midnight of the date field, ms since the epoch (two-digit years read as 1980–2079). */
  readonly dateMs?: number;
  readonly valid: boolean;
  readonly latitude?: number;
  readonly longitude?: number;
  readonly speedKnots?: number;
  readonly courseDeg?: number;
  /** NMEA 2.3 mode indicator: A autonomous, D differential, R RTK fixed, F RTK float, E estimated, N invalid. */
  readonly mode?: string;
}

/** GSA: fix type, satellites used and dilution of precision. */
export interface NmeaGsa {
  readonly type: 'GSA';
  readonly talker: string;
  /** 1 no fix, 2 2D, 3 3D. */
  readonly fixType: number;
  readonly satellites: readonly number[];
  readonly pdop?: number;
  readonly hdop?: number;
  readonly vdop?: number;
}

/** VTG: course and speed over ground. */
export interface NmeaVtg {
  readonly type: 'VTG';
  readonly talker: string;
  readonly courseDeg?: number;
  readonly speedKnots?: number;
  readonly speedKmh?: number;
}

export type NmeaSentence = NmeaGga | NmeaRmc | NmeaGsa | NmeaVtg;

/**
 * What `parseNmea` made of a line: the sentence, or why not — `checksum` (missing or wrong: the
 * line was damaged in transit), `malformed` (fields that do not parse), `unsupported` (a sentence
 * type other than GGA, RMC, GSA, VTG, or a line that is not NMEA).
 */
export type NmeaParse = { readonly ok: true; readonly sentence: NmeaSentence } | { readonly ok: false; readonly reason: 'checksum' | 'malformed' | 'unsupported' };

/**
 * Parses one NMEA 0183 sentence of any talker (GP, GN, GL, GA, BD...). Text before the `$`
 * (a logger's timestamp) is ignored. The `*hh` checksum — XOR of the bytes between `$` and
 * `*` — is required and verified. Never throws.
 */
export function parseNmea(line: string): NmeaParse {
  const start = line.indexOf('$');
  const star = line.lastIndexOf('*');
  if (start < 0) return { ok: false, reason: 'unsupported' };
  if (star < start) return { ok: false, reason: 'checksum' };
  const body = line.slice(start + 1, star);
  let sum = 0;
  for (let i = 0; i < body.length; i++) sum ^= body.charCodeAt(i);
  const given = Number.parseInt(line.slice(star + 1, star + 3), 16);
  if (!(given === sum && /^[0-9A-Fa-f]{2}$/u.test(line.slice(star + 1, star + 3)))) return { ok: false, reason: 'checksum' };
  const f = body.split(',');
  const address = f[0] ?? '';
  const talker = address.slice(0, 2);
  const parser = PARSERS[address.slice(2)];
  if (address.length !== 5 || parser === undefined) return { ok: false, reason: 'unsupported' };
  const sentence = parser(f, talker);
  return sentence === undefined ? { ok: false, reason: 'malformed' } : { ok: true, sentence };
}

/** A navigation epoch: the sentences a receiver sends for one instant, merged into one fix. */
export interface NmeaEpoch {
  readonly sensorTimeNs: bigint;
  /** Undefined when the receiver had no valid position at this instant. */
  readonly fix: GnssFix | undefined;
}

/**
 * Groups sentences into epochs by their UTC time (GGA and RMC carry it; GSA and VTG join the
 * epoch in progress) and merges each into one GnssFix: position, altitude, quality, satellites
 * and HDOP from GGA; speed, course and date from RMC, else VTG; HDOP from GSA when GGA lacks it.
 * The date comes from the last RMC; before any RMC (or in a GGA-only stream) from
 * `referenceDateMs`, advanced by a day when the time of day wraps past midnight.
 */
export class NmeaEpochs {
  private dateMs: number;
  private timeOfDayMs: number | undefined;
  private parts: { gga?: NmeaGga; rmc?: NmeaRmc; gsa?: NmeaGsa; vtg?: NmeaVtg } = {};

  constructor(referenceDateMs: number = Date.now()) {
    this.dateMs = Math.floor(referenceDateMs / DAY_MS) * DAY_MS;
  }

  /** Adds a sentence; returns the epoch it completed, if it started a new one. */
  push(sentence: NmeaSentence): NmeaEpoch | undefined {
    let done: NmeaEpoch | undefined;
    if (sentence.type === 'GGA' || sentence.type === 'RMC') {
      const tod = sentence.timeOfDayMs;
      if (tod !== undefined && tod !== this.timeOfDayMs) {
        done = this.flush();
        if (this.timeOfDayMs !== undefined && this.timeOfDayMs - tod > DAY_MS / 2) this.dateMs += DAY_MS;
        this.timeOfDayMs = tod;
      }
      if (sentence.type === 'RMC' && sentence.dateMs !== undefined) this.dateMs = sentence.dateMs;
    }
    if (sentence.type === 'GGA') this.parts.gga = sentence;
    else if (sentence.type === 'RMC') this.parts.rmc = sentence;
    else if (sentence.type === 'GSA') this.parts.gsa = sentence;
    else this.parts.vtg = sentence;
    return done;
  }

  /** Completes the epoch in progress (end of input); undefined when there is none. */
  flush(): NmeaEpoch | undefined {
    const { gga, rmc, gsa, vtg } = this.parts;
    this.parts = {};
    if (this.timeOfDayMs === undefined || (gga === undefined && rmc === undefined)) return undefined;
    const sensorTimeNs = BigInt(this.dateMs + this.timeOfDayMs) * 1_000_000n;
    return { sensorTimeNs, fix: mergeFix(gga, rmc, gsa, vtg) };
  }
}

/** Knots to metres per second. */
export const KNOT_MPS = 1852 / 3600;

const DAY_MS = 86_400_000;

const PARSERS: Readonly<Record<string, (f: readonly string[], talker: string) => NmeaSentence | undefined>> = {
  GGA(f, talker) {
    const quality = int(f[6]);
    if (quality === undefined) return undefined;
    const position = latLon(f[2], f[3], f[4], f[5]);
    if (position === null) return undefined;
    return { type: 'GGA', talker, ...opt('timeOfDayMs', time(f[1])), ...(position ?? {}), quality, ...opt('satellites', int(f[7])), ...opt('hdop', num(f[8])), ...opt('altitude', num(f[9])) };
  },
  RMC(f, talker) {
    const position = latLon(f[3], f[4], f[5], f[6]);
    if (position === null || (f[2] !== 'A' && f[2] !== 'V')) return undefined;
    return { type: 'RMC', talker, ...opt('timeOfDayMs', time(f[1])), ...opt('dateMs', date(f[9])), valid: f[2] === 'A', ...(position ?? {}), ...opt('speedKnots', num(f[7])), ...opt('courseDeg', num(f[8])), ...opt('mode', f[12] === undefined || f[12] === '' ? undefined : f[12]) };
  },
  GSA(f, talker) {
    const fixType = int(f[2]);
    if (fixType === undefined) return undefined;
    const satellites = f.slice(3, 15).filter((s) => s !== '').map(Number);
    return { type: 'GSA', talker, fixType, satellites, ...opt('pdop', num(f[15])), ...opt('hdop', num(f[16])), ...opt('vdop', num(f[17])) };
  },
  VTG(f, talker) {
    // NMEA 2.x: course,T,magnetic,M,knots,N,km/h,K; very old receivers omit the unit letters.
    const units = f[2] === 'T';
    return { type: 'VTG', talker, ...opt('courseDeg', num(f[1])), ...opt('speedKnots', num(f[units ? 5 : 3])), ...opt('speedKmh', num(f[units ? 7 : 4])) };
  },
};

function mergeFix(gga: NmeaGga | undefined, rmc: NmeaRmc | undefined, gsa: NmeaGsa | undefined, vtg: NmeaVtg | undefined): GnssFix | undefined {
  const fromGga = gga !== undefined && gga.quality > 0 && gga.latitude !== undefined && gga.longitude !== undefined;
  const fromRmc = rmc !== undefined && rmc.valid && rmc.latitude !== undefined && rmc.longitude !== undefined;
  if (!fromGga && !fromRmc) return undefined;
  const latitude = (fromGga ? gga?.latitude : rmc?.latitude) ?? 0;
  const longitude = (fromGga ? gga?.longitude : rmc?.longitude) ?? 0;
  const quality = fromGga ? gga?.quality : RMC_MODE_QUALITY[rmc?.mode ?? 'A'] ?? 1;
  const knots = rmc?.speedKnots ?? vtg?.speedKnots ?? (vtg?.speedKmh === undefined ? undefined : vtg.speedKmh / 1.852);
  return {
    latitude,
    longitude,
    ...opt('altitude', gga?.altitude),
    ...opt('quality', quality),
    ...opt('satellites', gga?.satellites ?? (gsa === undefined ? undefined : gsa.satellites.length)),
    ...opt('hdop', gga?.hdop ?? gsa?.hdop),
    ...opt('speedMps', knots === undefined ? undefined : knots * KNOT_MPS),
    ...opt('courseDeg', rmc?.courseDeg ?? vtg?.courseDeg),
  };
}

const RMC_MODE_QUALITY: Readonly<Record<string, number>> = { A: 1, D: 2, R: 4, F: 5, E: 6 };

/** `{ key: value }`, or nothing when the value is undefined (keeps optional fields absent). */
function opt<K extends string, V>(key: K, value: V | undefined): { [P in K]?: V } {
  return (value === undefined ? {} : { [key]: value }) as { [P in K]?: V };
}

function num(field: string | undefined): number | undefined {
  if (field === undefined || field === '') return undefined;
  const v = Number(field);
  return Number.isFinite(v) ? v : undefined;
}

function int(field: string | undefined): number | undefined {
  const v = num(field);
  return v !== undefined && Number.isInteger(v) ? v : undefined;
}

/** hhmmss(.sss) to ms past midnight. */
function time(field: string | undefined): number | undefined {
  if (field === undefined || !/^\d{6}(\.\d+)?$/u.test(field)) return undefined;
  const h = Number(field.slice(0, 2));
  const m = Number(field.slice(2, 4));
  const s = Number(field.slice(4));
  if (h > 23 || m > 59 || s >= 61) return undefined;
  return Math.round(((h * 60 + m) * 60 + s) * 1000);
}

/** ddmmyy to UTC midnight, ms since the epoch. */
function date(field: string | undefined): number | undefined {
  if (field === undefined || !/^\d{6}$/u.test(field)) return undefined;
  const yy = Number(field.slice(4));
  const ms = Date.UTC(yy < 80 ? 2000 + yy : 1900 + yy, Number(field.slice(2, 4)) - 1, Number(field.slice(0, 2)));
  return Number.isNaN(ms) ? undefined : ms;
}

/**
 * ddmm.mmmm,N,dddmm.mmmm,E to signed degrees: `undefined` when the fields are empty (no fix),
 * `null` when they are there but do not parse.
 */
function latLon(lat: string | undefined, ns: string | undefined, lon: string | undefined, ew: string | undefined): { latitude: number; longitude: number } | undefined | null {
  if ((lat ?? '') === '' && (lon ?? '') === '') return undefined;
  const a = degrees(lat, 2);
  const o = degrees(lon, 3);
  if (a === undefined || o === undefined || a > 90 || o > 180 || (ns !== 'N' && ns !== 'S') || (ew !== 'E' && ew !== 'W')) return null;
  return { latitude: ns === 'S' ? -a : a, longitude: ew === 'W' ? -o : o };
}

function degrees(field: string | undefined, degreeDigits: number): number | undefined {
  if (field === undefined || !new RegExp(`^\\d{${degreeDigits}}\\d{2}(\\.\\d+)?$`, 'u').test(field)) return undefined;
  const minutes = Number(field.slice(degreeDigits));
  return minutes >= 60 ? undefined : Number(field.slice(0, degreeDigits)) + minutes / 60;
}
