import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { findBinary, freePort, waitForPort } from './wait.js';

/**
 * A software TPM 2.0 (swtpm) that a test starts for itself: socket mode on two consecutive free
 * loopback ports (commands, control = commands + 1), a fresh state folder, powered on
 * (swtpm_ioctl -i: the swtpm TCTI of tpm2-tools does not do it, and a TPM that is not powered
 * answers 0x101) and started (tpm2_startup -c). `stop()` shuts it down and removes the folder.
 *
 * With `ekCertificate`, the state is manufactured first by swtpm_setup --create-ek-cert, as a
 * vendor would: an RSA-2048 EK persisted at 0x81010001 with its certificate in NV 0x01c00002 (and
 * an ECC P-384 EK at 0x81010016, certificate in 0x01c00016), signed by a local CA whose files are
 * kept inside the state folder (private config files, so parallel test files never share
 * /var/lib/swtpm-localca and it works without root). Only the sha256 PCR bank is active then;
 * without swtpm_setup all four banks (sha1, sha256, sha384, sha512) are.
 */
export interface Swtpm {
  /** For Tpm({ tcti }) and tpm2-tools' -T / TPM2TOOLS_TCTI. */
  readonly tcti: string;
  readonly port: number;
  readonly ctrlPort: number;
  readonly dir: string;
  stop(): Promise<void>;
}

export interface SwtpmOptions {
  /** Manufacture the TPM with swtpm_setup --create-ek-cert first (about a second). */
  readonly ekCertificate?: boolean;
  /**
   * How far to bring it up: 'started' (default: powered on and TPM2_Startup(CLEAR) done),
   * 'powered' (powered on, no startup: commands answer 0x100), 'off' (commands answer 0x101).
   */
  readonly state?: 'off' | 'powered' | 'started';
}

const run = promisify(execFile);

/** The programs these tests need; a reason to skip naming what to install when one is missing. */
export function swtpmMissing(): string | undefined {
  const missing = ['swtpm', 'swtpm_setup', 'swtpm_ioctl', 'swtpm_localca', 'tpm2_startup', 'tpm2_quote', 'tpm2_checkquote'].filter((b) => findBinary(b) === undefined);
  if (missing.length === 0) return undefined;
  return `${missing.join(', ')} not installed (apt install swtpm swtpm-tools tpm2-tools)`;
}

export async function startSwtpm(options: SwtpmOptions = {}): Promise<Swtpm> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'aios-swtpm-'));
  let child: ChildProcess | undefined;
  try {
    if (options.ekCertificate === true) await manufacture(dir);
    const port = await portPair();
    const ctrlPort = port + 1;
    child = spawn(
      findBinary('swtpm') ?? 'swtpm',
      ['socket', '--tpm2', '--tpmstate', `dir=${dir}`, '--server', `type=tcp,port=${port},bindaddr=127.0.0.1`, '--ctrl', `type=tcp,port=${ctrlPort},bindaddr=127.0.0.1`, '--log', `file=${path.join(dir, 'swtpm.log')}`],
      { stdio: 'ignore' },
    );
    const exited = new Promise<void>((resolve) => child?.once('exit', () => resolve()));
    await waitForPort(port, 5_000);
    const state = options.state ?? 'started';
    if (state !== 'off') await run(findBinary('swtpm_ioctl') ?? 'swtpm_ioctl', ['--tcp', `127.0.0.1:${ctrlPort}`, '-i']);
    const tcti = `swtpm:host=127.0.0.1,port=${port}`;
    if (state === 'started') await run('tpm2_startup', ['-c', '-T', tcti]);
    const proc = child;
    return {
      tcti,
      port,
      ctrlPort,
      dir,
      async stop() {
        // A graceful shutdown (-s) lets swtpm write its state; SIGKILL if it does not exit.
        await run(findBinary('swtpm_ioctl') ?? 'swtpm_ioctl', ['--tcp', `127.0.0.1:${ctrlPort}`, '-s']).catch(() => proc.kill('SIGTERM'));
        const timer = setTimeout(() => proc.kill('SIGKILL'), 2_000);
        await exited;
        clearTimeout(timer);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    child?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}

/**
 * A free port whose successor is free too: tpm2-tools' swtpm TCTI always finds the control
 * channel at the command port + 1 (it sets the locality through it).
 */
async function portPair(): Promise<number> {
  for (let tries = 0; tries < 50; tries++) {
    const port = await freePort();
    if (port < 65535 && (await canListen(port + 1))) return port;
  }
  throw new Error('no two consecutive free loopback ports for swtpm');
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** swtpm_setup with config files that keep the local CA inside `dir`. */
async function manufacture(dir: string): Promise<void> {
  const ca = path.join(dir, 'localca');
  const setupConf = path.join(dir, 'swtpm_setup.conf');
  writeFileSync(path.join(dir, 'swtpm-localca.conf'), [`statedir = ${ca}`, `signingkey = ${ca}/signkey.pem`, `issuercert = ${ca}/issuercert.pem`, `certserial = ${ca}/certserial`, ''].join('\n'));
  writeFileSync(path.join(dir, 'swtpm-localca.options'), '--platform-manufacturer aios\n--platform-version 2.1\n--platform-model swtpm\n');
  writeFileSync(
    setupConf,
    [
      `create_certs_tool = ${findBinary('swtpm_localca') ?? 'swtpm_localca'}`,
      `create_certs_tool_config = ${path.join(dir, 'swtpm-localca.conf')}`,
      `create_certs_tool_options = ${path.join(dir, 'swtpm-localca.options')}`,
      'active_pcr_banks = sha256',
      '',
    ].join('\n'),
  );
  await run(findBinary('swtpm_setup') ?? 'swtpm_setup', ['--tpm2', '--tpmstate', dir, '--config', setupConf, '--create-ek-cert', '--overwrite']);
}
