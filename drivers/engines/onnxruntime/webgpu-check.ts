import { execFile } from 'node:child_process';
import type { Support } from '../../hal/types.js';
import { reluModel } from './probe-model.js';

/**
 * Whether onnxruntime's WebGPU execution provider can get an adapter here, asked in a child
 * process: Dawn decides at adapter time whether the Vulkan driver has every feature it needs, no
 * file check can tell, and a broken driver stack may take the whole process down rather than
 * throw. The child creates a session for a one-node model with `webgpu` and runs it once.
 *
 * On failure the reason quotes Dawn's own explanation (for example Mesa's llvmpipe:
 * "Vulkan shaderUniform*ArrayDynamicIndexing required"), which is what the user needs to fix.
 */
export async function checkWebGpu(ortEntry: string, timeoutMs = 30_000): Promise<Support> {
  const script = `
    const ort = require(${JSON.stringify(ortEntry)});
    ort.env.logLevel = 'error';
    const model = Buffer.from(process.argv[1], 'base64');
    ort.InferenceSession.create(model, { executionProviders: ['webgpu'] })
      .then((s) => s.run({ x: new ort.Tensor('float32', Float32Array.of(-1, 2, -3, 4), [4]) }))
      .then((r) => { const y = Array.from(r.y.data); process.stdout.write(JSON.stringify({ ok: y.join() === '0,2,0,4', y })); process.exit(0); })
      .catch((e) => { process.stdout.write(JSON.stringify({ ok: false, error: String(e && e.message || e) })); process.exit(0); });`;
  const model = Buffer.from(reluModel()).toString('base64');
  return new Promise((resolve) => {
    execFile(process.execPath, ['-e', script, model], { timeout: timeoutMs, encoding: 'utf8', env: { ...process.env, XDG_RUNTIME_DIR: process.env['XDG_RUNTIME_DIR'] ?? '/tmp' } }, (error, stdout, stderr) => {
      let result: { ok?: boolean; error?: string } = {};
      try {
        result = JSON.parse(stdout) as { ok?: boolean; error?: string };
      } catch {
        // the child died before answering
      }
      if (result.ok === true) return resolve({ ok: true });
      const dawn = dawnExplanation(stderr);
      const died = error !== null && result.error === undefined ? `the check process ended with ${error.signal ?? `exit code ${String(error.code)}`}` : undefined;
      const detail = [dawn, result.error?.split('\n')[0]?.replace(/^.*?(Failed to get a WebGPU adapter)/u, '$1'), died].filter((s) => s !== undefined && s !== '').join('; ');
      resolve({ ok: false, reason: `WebGPU has no usable adapter: ${detail || 'unknown failure'}`, fix: 'install the GPU vendor\'s Vulkan driver (NVIDIA: the driver\'s Vulkan ICD, nvidia_icd.json; check with `vulkaninfo --summary`); software Vulkan (Mesa llvmpipe) is not enough for Dawn' });
    });
  });
}

/** Dawn prints why it rejected an adapter on stderr ("Warning: Vulkan X required."); keep those lines. */
function dawnExplanation(stderr: string): string | undefined {
  const lines = stderr.split('\n').map((l) => l.trim()).filter((l) => /^Warning: .*required/u.test(l) || /No supported adapters/u.test(l));
  return lines.length > 0 ? [...new Set(lines.map((l) => l.replace(/^Warning: /u, '')))].join('; ') : undefined;
}
