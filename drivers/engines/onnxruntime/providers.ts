import path from 'node:path';
import type { SysRoot } from '../../hal/sysroot.js';
import type { DeviceInfo, Support } from '../../hal/types.js';

/** onnxruntime execution providers aios drives, best first for NVIDIA devices. */
export type Provider = 'tensorrt' | 'cuda' | 'webgpu' | 'cpu';
export const GPU_PROVIDERS: readonly Provider[] = ['tensorrt', 'cuda', 'webgpu'];

/**
 * What `deploy/jetson/build-onnxruntime-node.sh` (or any aios-aware build) writes beside the
 * binding as `aios-build.json`: it marks a from-source build, says which providers it has, which
 * system libraries they were linked against, and whether the binding passes TensorRT options
 * (the npm binding passes only the device id, so engine cache, FP16 and DLA cannot be set).
 */
export interface BuildInfo {
  readonly providers: readonly Provider[];
  readonly requires?: Readonly<Partial<Record<Provider, readonly string[]>>>;
  readonly tensorrtOptions?: boolean;
  readonly jetpack?: string;
  readonly onnxruntime?: string;
}

/** Where the binding lives and how to look things up around it. */
export interface ProviderContext {
  /** The machine: system libraries (CUDA, TensorRT, Vulkan) are looked up here. */
  readonly sys: SysRoot;
  /** Where aios and its packages are installed: the binding folder is looked up here. */
  readonly install: SysRoot;
  readonly bindingDir: string;
  readonly arch: string;
  readonly build: BuildInfo | undefined;
  /** Whether the loaded binding includes the WebGPU provider (npm 1.30 for linux x64 does). */
  readonly webgpuBundled: boolean;
  /** The expensive check: can WebGPU get an adapter here. Memoised by the caller. */
  readonly webgpuAdapter: () => Promise<Support>;
}

/** The npm package's providers on linux/x64 need CUDA 12 and cuDNN 9 (onnxruntime 1.30's GPU build). */
const STOCK_REQUIRES: Record<'cuda' | 'tensorrt', readonly string[]> = {
  cuda: ['libcudart.so.12', 'libcublasLt.so.12', 'libcudnn.so.9'],
  tensorrt: ['libnvinfer.so.10', 'libnvinfer_plugin.so.10', 'libnvonnxparser.so.10'],
};

const LIBRARY_PACKAGES: Record<string, string> = {
  'libcudart.so.12': 'cuda-cudart-12-x (NVIDIA CUDA repository) or nvidia-cuda-toolkit',
  'libcublasLt.so.12': 'libcublas-12-x',
  'libcudnn.so.9': 'libcudnn9-cuda-12',
  'libnvinfer.so.10': 'libnvinfer10 (TensorRT 10)',
  'libnvinfer_plugin.so.10': 'libnvinfer-plugin10',
  'libnvonnxparser.so.10': 'libnvonnxparsers10',
};

/** Reads `aios-build.json` beside the binding, if this is an aios-aware source build. */
export async function readBuildInfo(install: SysRoot, bindingDir: string): Promise<BuildInfo | undefined> {
  const text = await install.readText(path.join(bindingDir, 'aios-build.json'));
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as BuildInfo;
  } catch {
    return undefined;
  }
}

/**
 * Whether one provider can run on `device` here, with the reason and fix when it cannot. Checks
 * files first (cheap), and only asks WebGPU for an adapter when everything else is in place.
 */
export async function checkProvider(provider: Provider, device: DeviceInfo, ctx: ProviderContext): Promise<Support> {
  switch (provider) {
    case 'cpu':
      return { ok: true };
    case 'cuda':
    case 'tensorrt': {
      const libs = provider === 'cuda' ? ['libonnxruntime_providers_cuda.so', 'libonnxruntime_providers_shared.so'] : ['libonnxruntime_providers_tensorrt.so', 'libonnxruntime_providers_shared.so', 'libonnxruntime_providers_cuda.so'];
      for (const lib of libs) {
        if (!(await ctx.install.exists(path.join(ctx.bindingDir, lib)))) return missingProvider(provider, lib, ctx, device);
      }
      const required = ctx.build?.requires?.[provider] ?? (ctx.build === undefined ? [...STOCK_REQUIRES.cuda, ...(provider === 'tensorrt' ? STOCK_REQUIRES.tensorrt : [])] : []);
      for (const lib of required) {
        if ((await ctx.sys.findLibrary(lib)) === undefined) {
          const pkg = LIBRARY_PACKAGES[lib];
          return { ok: false, reason: `${lib} not found (onnxruntime's ${provider === 'cuda' ? 'CUDA' : 'TensorRT'} provider links against it)`, fix: `${pkg === undefined ? `install the library providing ${lib}` : `install ${pkg}`}, or add its folder to /etc/ld.so.conf.d and run ldconfig` };
        }
      }
      return { ok: true };
    }
    case 'webgpu': {
      if (!ctx.webgpuBundled) return { ok: false, reason: `this onnxruntime-node build for linux/${ctx.arch} has no WebGPU provider`, fix: 'use the npm onnxruntime-node 1.30+ on linux x64, or build with --use_webgpu' };
      if ((await ctx.sys.findLibrary('libvulkan.so.1')) === undefined) return { ok: false, reason: 'libvulkan.so.1 not found (WebGPU runs over Vulkan)', fix: 'install libvulkan1 and your GPU driver\'s Vulkan ICD' };
      if (!ctx.sys.isLive && ctx.sys !== ctx.install) return { ok: false, reason: 'a WebGPU adapter can only be asked for on the machine itself, not on a captured system root', fix: 'run `aios devices` on that machine' };
      return ctx.webgpuAdapter();
    }
  }
}

function missingProvider(provider: Provider, lib: string, ctx: ProviderContext, device: DeviceInfo): Support {
  if (ctx.arch !== 'x64' || device.kind === 'jetson') {
    // Jetsons are arm64 whatever machine is asking (aios devices --sysroot on an x86 laptop).
    const arch = device.kind === 'jetson' ? 'arm64' : ctx.arch;
    return { ok: false, reason: `${lib} not found: onnxruntime-node from npm for linux/${arch} is CPU-only`, fix: 'build onnxruntime-node with CUDA and TensorRT on the device: deploy/jetson/build-onnxruntime-node.sh, then set AIOS_ONNXRUNTIME_NODE to the built package (see deploy/jetson/README.md)' };
  }
  const which = provider === 'tensorrt' ? 'TensorRT' : 'CUDA';
  return { ok: false, reason: `${lib} not found in ${ctx.bindingDir}`, fix: `install onnxruntime's ${which} provider where the network allows: \`npx onnxruntime-node-install --onnxruntime-node-install=cuda12\` from node_modules/onnxruntime-node, or copy it from the Microsoft.ML.OnnxRuntime.Gpu.Linux NuGet package into that folder` };
}
