import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { TpmError } from '../../../../drivers/tpm/errors.js';
import { decodeEventLog, EVENT_LOG_PATH, eventTypeName, readEventLog, replayEventLog } from '../../../../drivers/tpm/event-log.js';
import type { PcrValues } from '../../../../drivers/tpm/pcr.js';
import { Tpm } from '../../../../drivers/tpm/tpm.js';
import { SysRoot } from '../../../../drivers/hal/sysroot.js';
import { startSwtpm, swtpmMissing } from '../../../support/swtpm.js';
import { findBinary } from '../../../support/wait.js';
import { cryptoAgileLog, sha1Log, uefiBoot } from './event-log-writer.js';

const exec = promisify(execFile);
if (findBinary('tpm2_eventlog') === undefined) console.warn('event log cross-check with tpm2_eventlog skipped: tpm2-tools not installed (apt install tpm2-tools)');
if (swtpmMissing() !== undefined) console.warn(`event log replay against swtpm skipped: ${swtpmMissing()}`);
const work = mkdtempSync(path.join(os.tmpdir(), 'aios-eventlog-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const log = cryptoAgileLog(uefiBoot(3));

function hexValues(v: PcrValues): Record<string, Record<number, string>> {
  return Object.fromEntries(v.map((b) => [b.hash, Object.fromEntries([...b.values].map(([i, d]) => [i, d.toString('hex')]))]));
}

describe('TCG event log', () => {
  it('decodes the crypto-agile format: Spec ID header, then one record per measurement', () => {
    const l = decodeEventLog(log);
    expect(l.format).toBe('crypto-agile');
    expect(l.algorithms).toEqual([{ alg: 4, hash: 'sha1', digestSize: 20 }, { alg: 11, hash: 'sha256', digestSize: 32 }]);
    expect(l.specId).toMatchObject({ platformClass: 0, specVersion: '2.0.0', uintnSize: 2 });
    expect(l.events).toHaveLength(uefiBoot(3).length);
    expect(l.events.map((e) => eventTypeName(e.eventType)).slice(0, 3)).toEqual(['EV_NO_ACTION', 'EV_S_CRTM_VERSION', 'EV_EFI_PLATFORM_FIRMWARE_BLOB']);
    const boot = l.events.find((e) => e.eventType === 0x80000003);
    expect([boot?.pcrIndex, boot?.digests.map((d) => d.hash)]).toEqual([4, ['sha1', 'sha256']]);
    expect(eventTypeName(0x12345678)).toBe('0x12345678');
  });

  it.skipIf(findBinary('tpm2_eventlog') === undefined)('replays to the same PCRs as tpm2_eventlog', async () => {
    // Locality 0: tpm2_eventlog 5.4 does not start PCR 0 from the StartupLocality value (the next test does).
    const file = path.join(work, 'log.bin');
    const log = cryptoAgileLog(uefiBoot(0));
    writeFileSync(file, log);
    const { stdout } = await exec('tpm2_eventlog', [file]);
    const theirs: Record<string, Record<number, string>> = {};
    let bank = '';
    for (const line of stdout.slice(stdout.indexOf('\npcrs:')).split('\n')) {
      const b = /^ {2}(\w+):$/u.exec(line);
      if (b) theirs[(bank = b[1]!)] = {};
      const v = /^ {4}(\d+)\s*: 0x([0-9a-fA-F]+)$/u.exec(line);
      if (v) theirs[bank]![Number(v[1])] = v[2]!.toLowerCase();
    }
    const ours = hexValues(replayEventLog(decodeEventLog(log)));
    expect(Object.keys(ours.sha256!)).toHaveLength(10);
    expect(ours).toEqual(theirs);
  });

  it('starts PCR 0 from the StartupLocality a firmware declares (00..03 for locality 3), as go-attestation does', () => {
    const l = decodeEventLog(log);
    let pcr0 = Buffer.alloc(32);
    pcr0[31] = 3;
    for (const e of l.events) if (e.pcrIndex === 0 && e.eventType !== 0x3) pcr0 = createHash('sha256').update(pcr0).update(e.digests[1]!.digest).digest();
    const replayed = replayEventLog(l);
    expect(replayed[1]?.values.get(0)).toEqual(pcr0);
    expect(replayed[1]?.values.get(0)).not.toEqual(replayEventLog(decodeEventLog(cryptoAgileLog(uefiBoot(0))))[1]?.values.get(0));
    expect(replayed[1]?.values.get(4)).toEqual(replayEventLog(decodeEventLog(cryptoAgileLog(uefiBoot(0))))[1]?.values.get(4));
  });

  it.skipIf(swtpmMissing() !== undefined)('replays to the PCRs a TPM holds after the same extends', async () => {
    const swtpm = await startSwtpm();
    try {
      const tpm = new Tpm({ tcti: swtpm.tcti });
      const l = decodeEventLog(cryptoAgileLog(uefiBoot(0)));
      for (const e of l.events) {
        if (e.eventType === 0x3) continue;
        for (const d of e.digests) await tpm.extendPcr(e.pcrIndex, d.digest, d.hash);
      }
      const replayed = replayEventLog(l);
      const read = await tpm.readPcrs(replayed.map((b) => ({ hash: b.hash, pcrs: [...b.values.keys()] })));
      expect(hexValues(read)).toEqual(hexValues(replayed));
    } finally {
      await swtpm.stop();
    }
  });

  it('decodes the SHA-1 format of TPM 1.2-era firmware', () => {
    const l = decodeEventLog(sha1Log(uefiBoot(0)));
    expect([l.format, l.events.length, l.specId]).toEqual(['sha1', uefiBoot(0).length, undefined]);
    expect(replayEventLog(l).map((b) => b.hash)).toEqual(['sha1']);
  });

  it('every truncation is EAI_TPM_MALFORMED naming the byte offset; random corruption never crashes', () => {
    for (let n = 1; n < log.length; n++) {
      try {
        decodeEventLog(log.subarray(0, n));
        // A cut exactly between two records is a shorter valid log.
      } catch (error) {
        expect(error).toMatchObject({ code: 'EAI_TPM_MALFORMED', message: expect.stringMatching(/at byte \d+/u) });
      }
    }
    expect(() => decodeEventLog(log.subarray(0, 10))).toThrow(expect.objectContaining({ code: 'EAI_TPM_MALFORMED' }));
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(log.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }), (edits) => {
        const bad = Buffer.from(log);
        for (const [i, v] of edits) bad[i] = v;
        try {
          replayEventLog(decodeEventLog(bad));
        } catch (error) {
          expect(error).toBeInstanceOf(TpmError);
        }
      }),
      { numRuns: 500 },
    );
  });

  it('refuses a header that lies: a digest size that is not its hash size, an undeclared algorithm', () => {
    const badSize = cryptoAgileLog(uefiBoot(0), [{ alg: 0x000b, hash: 'sha256', size: 20 }]);
    expect(() => decodeEventLog(badSize)).toThrow(/declared with a 20-byte digest/u);
    const undeclared = Buffer.from(log);
    const first = 32 + undeclared.readUInt32LE(28); // after the header event
    undeclared.writeUInt16LE(0x000c, first + 12); // the first digest's algorithm: sha384
    expect(() => decodeEventLog(undeclared)).toThrow(/which the Spec ID header does not declare/u);
  });

  it('reads the log from a system root; a machine without one has none', async () => {
    const root = path.join(work, 'root');
    mkdirSync(path.join(root, path.dirname(EVENT_LOG_PATH)), { recursive: true });
    writeFileSync(path.join(root, EVENT_LOG_PATH), log);
    expect((await readEventLog(await SysRoot.open(root)))?.events).toHaveLength(uefiBoot(3).length);
    expect(await readEventLog(await SysRoot.open(work))).toBeUndefined();
    if (process.getuid?.() !== 0) {
      chmodSync(path.join(root, EVENT_LOG_PATH), 0o000);
      await expect(readEventLog(await SysRoot.open(root))).rejects.toMatchObject({ code: 'EAI_TPM_DEVICE_ACCESS' });
    }
  });
});
