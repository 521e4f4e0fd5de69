import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KNOT_MPS, NmeaEpochs, parseNmea, type NmeaSentence } from '../../../../drivers/sensors/nmea.js';

/** Appends the `*hh` checksum (XOR of the bytes between `$` and `*`). */
function withChecksum(sentence: string): string {
  let sum = 0;
  for (const ch of sentence.slice(1)) sum ^= ch.charCodeAt(0);
  return `${sentence}*${sum.toString(16).toUpperCase().padStart(2, '0')}`;
}

function sentence(line: string): NmeaSentence {
  const parsed = parseNmea(line);
  if (!parsed.ok) throw new Error(`${line}: ${parsed.reason}`);
  return parsed.sentence;
}

// Real sentences from gpsd's test logs (Haicom HI-305N, CH-4711), see test/fixtures/gnss/README.md.
const GGA = '$GPGGA,095305.802,2712.6547,S,15303.1350,E,1,04,21.1,3.0,M,42.2,M,,*75';
const RMC = '$GPRMC,095305.802,A,2712.6547,S,15303.1350,E,1.93,133.96,080407,,,A*78';
const GSA = '$GPGSA,A,3,05,07,12,24,30,,,,,,,,11.7,7.5,9.0*0A';
const VTG = '$GPVTG,133.96,T,,,1.93,N,3.57,K,A*74';

describe('parseNmea', () => {
  it('GGA: time of day, signed degrees from ddmm.mmmm, quality, satellites, HDOP, altitude', () => {
    expect(sentence(GGA)).toEqual({
      type: 'GGA',
      talker: 'GP',
      timeOfDayMs: ((9 * 60 + 53) * 60 + 5.802) * 1000,
      latitude: -(27 + 12.6547 / 60),
      longitude: 153 + 3.135 / 60,
      quality: 1,
      satellites: 4,
      hdop: 21.1,
      altitude: 3,
    });
  });

  it('RMC: validity, date (two-digit year), speed in knots, course, mode', () => {
    expect(sentence(RMC)).toEqual({
      type: 'RMC',
      talker: 'GP',
      timeOfDayMs: 35_585_802,
      dateMs: Date.UTC(2007, 3, 8),
      valid: true,
      latitude: -(27 + 12.6547 / 60),
      longitude: 153 + 3.135 / 60,
      speedKnots: 1.93,
      courseDeg: 133.96,
      mode: 'A',
    });
    expect(sentence('$GPRMC,095257.809,V,2712.6404,S,15303.1201,E,0.00,0.00,080407,,,A*64')).toMatchObject({ valid: false });
  });

  it('GSA and VTG', () => {
    expect(sentence(GSA)).toEqual({ type: 'GSA', talker: 'GP', fixType: 3, satellites: [5, 7, 12, 24, 30], pdop: 11.7, hdop: 7.5, vdop: 9 });
    expect(sentence(VTG)).toEqual({ type: 'VTG', talker: 'GP', courseDeg: 133.96, speedKnots: 1.93, speedKmh: 3.57 });
  });

  it('any talker: a GLONASS+GPS receiver (GN) at the position gpsd computes for the same sentence', () => {
    const gga = sentence('$GNGGA,135651.997,5543.0328,N,03724.7198,E,1,06,01.8,165.6,M,14.6,M,,*73');
    // gpsd 3.x, test/daemon/ch-4711.log.chk: "lat":55.717213333,"lon":37.411996667
    expect(gga).toMatchObject({ talker: 'GN', quality: 1, satellites: 6, hdop: 1.8, altitude: 165.6 });
    expect(gga.type === 'GGA' ? [gga.latitude?.toFixed(9), gga.longitude?.toFixed(9)] : []).toEqual(['55.717213333', '37.411996667']);
  });

  it('a GGA without a fix has no position, and that is not an error', () => {
    expect(sentence('$GPGGA,095257.809,2712.6404,S,15303.1201,E,0,00,00.0,4.0,M,42.2,M,,*7B')).toMatchObject({ quality: 0 });
    expect(sentence(withChecksum('$GPGGA,120000.00,,,,,0,00,99.99,,,,,,'))).toEqual({ type: 'GGA', talker: 'GP', timeOfDayMs: 43_200_000, quality: 0, satellites: 0, hdop: 99.99 });
  });

  it('refuses a wrong or missing checksum, unknown sentences and fields that do not parse', () => {
    expect(parseNmea(GGA.replace('2712.6547', '2712.6548'))).toEqual({ ok: false, reason: 'checksum' });
    expect(parseNmea(GGA.slice(0, -3))).toEqual({ ok: false, reason: 'checksum' });
    expect(parseNmea(GGA.replace('*75', '*7G'))).toEqual({ ok: false, reason: 'checksum' });
    expect(parseNmea('$GPGSV,3,1,12,2,15,123,,5,45,347,45,6,58,198,,7,45,212,*77')).toEqual({ ok: false, reason: 'unsupported' });
    expect(parseNmea('!AIVDM,1,1,,A,13aEOK?P00PD2wVMdLDRhgvL289?,0*26')).toEqual({ ok: false, reason: 'unsupported' });
    expect(parseNmea(withChecksum('$GPGGA,095305.802,27X2.6547,S,15303.1350,E,1,04,21.1,3.0,M,42.2,M,,'))).toEqual({ ok: false, reason: 'malformed' });
    expect(parseNmea(withChecksum('$GPGGA,095305.802,2772.6547,S,15303.1350,E,1,04,21.1,3.0,M,42.2,M,,'))).toEqual({ ok: false, reason: 'malformed' });
    expect(parseNmea(withChecksum('$GPRMC,095305.802,X,2712.6547,S,15303.1350,E,1.93,133.96,080407,,,A'))).toEqual({ ok: false, reason: 'malformed' });
  });

  it('ignores a logger prefix before the $ and a trailing CR', () => {
    expect(sentence(`1226225355.2 ${GGA}\r`)).toMatchObject({ type: 'GGA', quality: 1 });
  });

  it('property: any GGA it is given back round-trips; any one changed character is caught by the checksum', () => {
    const gga = fc.record({
      seconds: fc.integer({ min: 0, max: 86_399_999 }),
      lat: fc.integer({ min: 0, max: 89_999_999 }),
      lon: fc.integer({ min: 0, max: 179_999_999 }),
      south: fc.boolean(),
      west: fc.boolean(),
      quality: fc.constantFrom(1, 2, 4, 5),
      sats: fc.integer({ min: 0, max: 40 }),
      alt: fc.integer({ min: -4000, max: 90_000 }),
    });
    fc.assert(
      fc.property(gga, fc.nat(), fc.integer({ min: 33, max: 126 }), (g, at, code) => {
        const t = g.seconds;
        const time = `${pad(Math.floor(t / 3_600_000), 2)}${pad(Math.floor(t / 60_000) % 60, 2)}${pad(Math.floor(t / 1000) % 60, 2)}.${pad(t % 1000, 3)}`;
        const latDeg = Math.floor(g.lat / 1_000_000);
        const latMin = ((g.lat % 1_000_000) * 60) / 1_000_000;
        const lonDeg = Math.floor(g.lon / 1_000_000);
        const lonMin = ((g.lon % 1_000_000) * 60) / 1_000_000;
        const line = withChecksum(`$GNGGA,${time},${pad(latDeg, 2)}${latMin.toFixed(4).padStart(7, '0')},${g.south ? 'S' : 'N'},${pad(lonDeg, 3)}${lonMin.toFixed(4).padStart(7, '0')},${g.west ? 'W' : 'E'},${g.quality},${pad(g.sats, 2)},0.9,${(g.alt / 10).toFixed(1)},M,0.0,M,,`);
        const parsed = sentence(line);
        if (parsed.type !== 'GGA') return false;
        const lat = (g.south ? -1 : 1) * (latDeg + Number(latMin.toFixed(4)) / 60);
        const lon = (g.west ? -1 : 1) * (lonDeg + Number(lonMin.toFixed(4)) / 60);
        const same = parsed.timeOfDayMs === t && Math.abs((parsed.latitude ?? NaN) - lat) < 1e-9 && Math.abs((parsed.longitude ?? NaN) - lon) < 1e-9 && parsed.quality === g.quality && parsed.satellites === g.sats && parsed.altitude === Number((g.alt / 10).toFixed(1));
        // Corrupt one character of the body (between '$' and '*') to a different printable one.
        const star = line.indexOf('*');
        const i = 1 + (at % (star - 1));
        const replacement = String.fromCharCode(code === line.charCodeAt(i) ? (code === 126 ? 33 : code + 1) : code);
        if (replacement === '*' || replacement === '$') return same;
        const corrupted = line.slice(0, i) + replacement + line.slice(i + 1);
        return same && !parseNmea(corrupted).ok;
      }),
      { numRuns: 500 },
    );
  });
});

describe('NmeaEpochs', () => {
  it('merges one epoch: position from GGA, speed and course from RMC, date from RMC', () => {
    const epochs = new NmeaEpochs(Date.UTC(2030, 0, 1));
    for (const line of [GGA, GSA, RMC, VTG]) expect(epochs.push(sentence(line))).toBeUndefined();
    expect(epochs.flush()).toEqual({
      sensorTimeNs: BigInt(Date.UTC(2007, 3, 8, 9, 53, 5, 802)) * 1_000_000n,
      fix: { latitude: -(27 + 12.6547 / 60), longitude: 153 + 3.135 / 60, altitude: 3, quality: 1, satellites: 4, hdop: 21.1, speedMps: 1.93 * KNOT_MPS, courseDeg: 133.96 },
    });
  });

  it('completes an epoch when the next time arrives; GSA/VTG join the epoch in progress', () => {
    const epochs = new NmeaEpochs(Date.UTC(2007, 3, 8));
    epochs.push(sentence('$GPGGA,095304.802,2712.6520,S,15303.1397,E,1,00,17.0,3.0,M,42.2,M,,*7E'));
    epochs.push(sentence('$GPGSA,A,2,05,12,30,,,,,,,,,,17.0,17.0,0.0*36'));
    const done = epochs.push(sentence('$GPGGA,095305.802,2712.6547,S,15303.1350,E,1,04,21.1,3.0,M,42.2,M,,*75'));
    expect(done?.sensorTimeNs).toBe(BigInt(Date.UTC(2007, 3, 8, 9, 53, 4, 802)) * 1_000_000n);
    expect(done?.fix).toMatchObject({ satellites: 0, hdop: 17 });
    expect(done?.fix?.speedMps).toBeUndefined();
  });

  it('an epoch without a valid position has no fix; RMC alone gives one, its mode the quality', () => {
    const epochs = new NmeaEpochs();
    epochs.push(sentence('$GPRMC,095257.809,V,2712.6404,S,15303.1201,E,0.00,0.00,080407,,,A*64'));
    expect(epochs.flush()).toEqual({ sensorTimeNs: BigInt(Date.UTC(2007, 3, 8, 9, 52, 57, 809)) * 1_000_000n, fix: undefined });
    epochs.push(sentence(withChecksum('$GNRMC,000001.00,A,5000.0000,N,00800.0000,E,0.5,90.0,010124,,,D')));
    expect(epochs.flush()?.fix).toEqual({ latitude: 50, longitude: 8, quality: 2, speedMps: 0.5 * KNOT_MPS, courseDeg: 90 });
  });

  it('GGA-only streams take the reference date and roll over at midnight', () => {
    const epochs = new NmeaEpochs(Date.UTC(2024, 1, 28, 18));
    epochs.push(sentence(withChecksum('$GPGGA,235959.50,5000.0000,N,00800.0000,E,1,08,0.9,100.0,M,47.0,M,,')));
    const before = epochs.push(sentence(withChecksum('$GPGGA,000000.50,5000.0000,N,00800.0000,E,1,08,0.9,100.0,M,47.0,M,,')));
    expect(before?.sensorTimeNs).toBe(BigInt(Date.UTC(2024, 1, 28, 23, 59, 59, 500)) * 1_000_000n);
    expect(epochs.flush()?.sensorTimeNs).toBe(BigInt(Date.UTC(2024, 1, 29, 0, 0, 0, 500)) * 1_000_000n);
  });
});

function pad(n: number, width: number): string {
  return String(n).padStart(width, '0');
}
