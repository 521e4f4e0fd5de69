import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cpuProbe } from '../../../../drivers/devices/cpu.js';
import { SysRoot } from '../../../../drivers/hal/sysroot.js';
import { SYSROOTS, tempRoot } from '../../../support/sysroots.js';

const KIB = 1024;
const FORMATS = ['onnx', 'tflite', 'tfjs-graph', 'tfjs-layers'];

async function probeFixture(name: string) {
  return cpuProbe.probe(await SysRoot.open(path.join(SYSROOTS, name)));
}


describe('cpuProbe on recorded machines', () => {
  it('reads the two-socket Sapphire Rapids server: model name, AVX-512 and AMX, sockets, MemTotal', async () => {
    expect(await probeFixture('x86-server')).toEqual([{
      id: 'cpu:0',
      kind: 'cpu',
      name: 'Intel(R) Xeon(R) Platinum 8468',
      memoryBytes: 1055802368 * KIB,
      formats: FORMATS,
      status: { state: 'ready' },
      details: {
        arch: 'x86_64',
        logicalCores: 8,
        physicalCores: 8,
        sockets: 2,
        features: [
          'amx_bf16', 'amx_int8', 'amx_tile', 'avx', 'avx2', 'avx512_bf16', 'avx512_fp16', 'avx512_vnni',
          'avx512bw', 'avx512f', 'avx512vl', 'avx_vnni', 'f16c', 'fma', 'sse4_2',
        ],
      },
    }]);
  });

  it('reads the Raspberry Pi 5: 4× Cortex-A76 from the part table, NEON and dot product, board from the device tree', async () => {
    expect(await probeFixture('rpi5-coral-usb')).toEqual([{
      id: 'cpu:0',
      kind: 'cpu',
      name: '4× Cortex-A76',
      memoryBytes: 8245296 * KIB,
      formats: FORMATS,
      status: { state: 'ready' },
      details: {
        arch: 'aarch64',
        logicalCores: 4,
        physicalCores: 4,
        features: ['dotprod', 'fp16', 'neon'],
        board: 'Raspberry Pi 5 Model B Rev 1.0',
      },
    }]);
  });

  it('reads the Kria KV260: 4× Cortex-A53 with NEON only, and the carrier-card model string', async () => {
    const [cpu] = await probeFixture('kria-kv260');
    expect(cpu?.name).toBe('4× Cortex-A53');
    expect(cpu?.memoryBytes).toBe(3936708 * KIB);
    expect(cpu?.details).toEqual({ arch: 'aarch64', logicalCores: 4, physicalCores: 4, features: ['neon'], board: 'ZynqMP KV260 revB' });
  });

  it('reads the N100 mini PC: AVX2 and AVX-VNNI but no AVX-512', async () => {
    const [cpu] = await probeFixture('x86-coral-m2');
    expect(cpu?.name).toBe('Intel(R) N100');
    expect(cpu?.details?.['features']).toEqual(['avx', 'avx2', 'avx_vnni', 'f16c', 'fma', 'sse4_2']);
    expect(cpu?.details?.['logicalCores']).toBe(4);
    expect(cpu?.details?.['sockets']).toBe(1);
  });

  // Other helpers add Jetson, RTX and server fixtures; the CPU probe must read all of them.
  const withCpuinfo = readdirSync(SYSROOTS).filter((name) => existsSync(path.join(SYSROOTS, name, 'proc', 'cpuinfo')));
  it.each(withCpuinfo)('returns exactly one ready CPU with cores and memory on %s', async (name) => {
    const devices = await probeFixture(name);
    expect(devices).toHaveLength(1);
    const [cpu] = devices;
    expect(cpu?.id).toBe('cpu:0');
    expect(cpu?.status).toEqual({ state: 'ready' });
    expect(cpu?.details?.['logicalCores']).toBeGreaterThan(0);
    expect(cpu?.memoryBytes).toBeGreaterThan(0);
    expect(cpu?.name).not.toBe('Unknown CPU');
  });
});

describe('cpuProbe on unusual cpuinfo', () => {
  it('names big.LITTLE and NVIDIA cores from the implementer/part table, and reports SVE', async () => {
    const block = (n: number, implementer: string, part: string) =>
      `processor\t: ${n}\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp sve sve2 i8mm bf16\n` +
      `CPU implementer\t: ${implementer}\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: ${part}\nCPU revision\t: 0\n\n`;
    const sys = await tempRoot({
      '/proc/cpuinfo': block(0, '0x41', '0xd4f') + block(1, '0x41', '0xd4f') + block(2, '0x4e', '0x004') + block(3, '0x41', '0xfff'),
      '/proc/meminfo': 'MemTotal:       65536000 kB\n',
    });
    const [cpu] = await cpuProbe.probe(sys);
    expect(cpu?.name).toBe('2× Neoverse-V2 + 1× NVIDIA Carmel + 1× Arm core 0x41:0xfff');
    expect(cpu?.details?.['features']).toEqual(['bf16', 'dotprod', 'fp16', 'i8mm', 'neon', 'sve', 'sve2']);
  });

  it('counts physical cores with hyper-threading from `cpu cores` when core ids are missing', async () => {
    const block = (n: number) => `processor\t: ${n}\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU\nphysical id\t: 0\ncpu cores\t: 2\nflags\t\t: fpu lm avx2\n\n`;
    const [cpu] = await cpuProbe.probe(await tempRoot({ '/proc/cpuinfo': [0, 1, 2, 3].map(block).join('') }));
    expect(cpu?.details).toEqual({ arch: 'x86_64', logicalCores: 4, physicalCores: 2, sockets: 1, features: ['avx2'] });
    expect(cpu?.memoryBytes).toBeUndefined();
  });

  it('still reports cpu:0, ready, on a root without /proc', async () => {
    const [cpu, ...rest] = await cpuProbe.probe(await tempRoot({ '/etc/hostname': 'empty\n' }));
    expect(rest).toEqual([]);
    expect(cpu).toEqual({
      id: 'cpu:0',
      kind: 'cpu',
      name: 'Unknown CPU',
      formats: FORMATS,
      status: { state: 'ready' },
      details: { arch: 'unknown', logicalCores: 0, physicalCores: 0, features: [] },
    });
  });
});
