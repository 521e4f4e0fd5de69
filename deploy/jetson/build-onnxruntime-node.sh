#!/usr/bin/env bash
# Builds onnxruntime-node with the CUDA and TensorRT execution providers on an NVIDIA Jetson
# (npm's onnxruntime-node for linux/arm64 is CPU-only), patches its binding so aios can pass
# TensorRT options (engine cache, FP16, INT8, DLA core), and installs it where aios finds it:
#
#   deploy/jetson/build-onnxruntime-node.sh [--prefix /opt/aios/onnxruntime-node] [--src DIR] [--jobs N]
#   export AIOS_ONNXRUNTIME_NODE=/opt/aios/onnxruntime-node     # e.g. in the aios systemd unit
#
# Run it on the Jetson itself (or an identical JetPack image), with JetPack's CUDA, cuDNN and
# TensorRT installed (`sudo apt install nvidia-jetpack`). It needs the onnxruntime sources: with
# network access it clones them; on an air-gapped host pass --src a checkout of the same tag.
# Takes 1-3 hours on an Orin; use a swap file on 8 GB modules.
set -euo pipefail

ORT_TAG=${ORT_TAG:-v1.30.0}       # must match the onnxruntime-node version in aios's package.json
prefix=/opt/aios/onnxruntime-node
src=
jobs=$(( $(nproc) > 4 ? 4 : $(nproc) ))   # nvcc needs ~2 GB per job
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) prefix=$2; shift 2 ;;
    --src) src=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "error: $*" >&2; exit 1; }

# --- What this Jetson has ----------------------------------------------------------------------
[ "$(uname -m)" = aarch64 ] || die "run this on the Jetson (aarch64); found $(uname -m)"
[ -r /etc/nv_tegra_release ] || die "/etc/nv_tegra_release not found: this is not a JetPack (L4T) system"
l4t=$(sed -n 's/^# R\([0-9]*\) (release), REVISION: \([0-9.]*\).*/\1.\2/p' /etc/nv_tegra_release)
cuda_home=${CUDA_HOME:-/usr/local/cuda}
[ -x "$cuda_home/bin/nvcc" ] || die "nvcc not found in $cuda_home: sudo apt install nvidia-jetpack (or cuda-toolkit)"
cuda_version=$("$cuda_home/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
trt_lib=$(ls /usr/lib/aarch64-linux-gnu/libnvinfer.so.* 2>/dev/null | head -1 || true)
[ -n "$trt_lib" ] || die "TensorRT (libnvinfer) not found: sudo apt install tensorrt"
trt_major=$(basename "$trt_lib" | sed 's/libnvinfer\.so\.\([0-9]*\).*/\1/')
soc=$(tr '\0' '\n' </proc/device-tree/compatible | grep -o 'tegra[0-9]*' | head -1)
case $soc in
  tegra234) arch=87 ;;   # Orin
  tegra194) arch=72 ;;   # Xavier
  *) die "unsupported SoC '$soc': this script knows Orin (tegra234) and Xavier (tegra194)" ;;
esac
echo "L4T $l4t, CUDA $cuda_version, TensorRT $trt_major, $soc (sm_$arch)"
# onnxruntime 1.30 needs TensorRT 10 and CUDA >= 11.8: JetPack 6.1+ has both. On JetPack 5 and
# 6.0 (TensorRT 8.x) build an older tag with ORT_TAG and expect a binding without inputMetadata.
if [ "$trt_major" -lt 10 ] && [ "$ORT_TAG" = v1.30.0 ]; then
  die "TensorRT $trt_major is too old for onnxruntime $ORT_TAG (needs TensorRT 10, JetPack 6.1+). Upgrade JetPack, or see deploy/jetson/README.md for older releases."
fi

# --- Sources -----------------------------------------------------------------------------------
if [ -z "$src" ]; then
  src=$(mktemp -d)/onnxruntime
  git clone --depth 1 --branch "$ORT_TAG" --recursive https://github.com/microsoft/onnxruntime "$src"
fi
[ -f "$src/js/node/src/session_options_helper.cc" ] || die "$src is not an onnxruntime checkout"

# --- Patch: pass TensorRT provider options from JavaScript ---------------------------------------
# The stock binding sets only device_id, so engine caching (minutes saved on every start), FP16
# and DLA cannot be enabled. This hands every other string property of the `tensorrt` provider
# object to UpdateTensorRTProviderOptions, using onnxruntime's own option names (trt_*).
python3 - "$src/js/node/src/session_options_helper.cc" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
if 'aios: TensorRT options' in text:
    sys.exit(0)
anchor = 'sessionOptions.AppendExecutionProvider_TensorRT_V2(*options);'
if anchor not in text:
    sys.exit('session_options_helper.cc changed upstream: cannot find the TensorRT anchor; update the patch')
block = '''// aios: TensorRT options
      if (epValue.IsObject()) {
        std::vector<std::string> keys, values;
        auto obj = epValue.As<Napi::Object>();
        for (const auto& kv : obj.GetPropertyNames()) {
          Napi::Value k = kv.second;
          std::string key = k.As<Napi::String>().Utf8Value();
          if (key == "name" || key == "deviceId" || !obj.Get(k).IsString()) continue;
          keys.push_back(key);
          values.push_back(obj.Get(k).As<Napi::String>().Utf8Value());
        }
        std::vector<const char*> kp, vp;
        for (size_t j = 0; j < keys.size(); j++) { kp.push_back(keys[j].c_str()); vp.push_back(values[j].c_str()); }
        if (!kp.empty()) Ort::ThrowOnError(Ort::GetApi().UpdateTensorRTProviderOptions(options, kp.data(), vp.data(), kp.size()));
      }
      '''
text = text.replace(anchor, block + anchor, 1)
open(path, 'w').write(text)
PY

# --- Build -------------------------------------------------------------------------------------
cd "$src"
./build.sh --config Release --update --build --parallel "$jobs" --skip_tests \
  --build_shared_lib --build_nodejs \
  --use_cuda --cuda_home "$cuda_home" --cudnn_home /usr/lib/aarch64-linux-gnu \
  --use_tensorrt --tensorrt_home /usr/lib/aarch64-linux-gnu \
  --cmake_extra_defines CMAKE_CUDA_ARCHITECTURES="$arch" onnxruntime_BUILD_UNIT_TESTS=OFF

bin="$src/js/node/bin/napi-v6/linux/arm64"
[ -f "$bin/onnxruntime_binding.node" ] || die "the build did not produce $bin/onnxruntime_binding.node"
for lib in libonnxruntime_providers_cuda.so libonnxruntime_providers_tensorrt.so libonnxruntime_providers_shared.so; do
  [ -f "$bin/$lib" ] || cp "$src/build/Linux/Release/$lib" "$bin/"
done

# aios reads this to know the build is CUDA/TensorRT-capable and which libraries it needs.
needs() { ldd "$bin/$1" | awk '/=>/ {print $1}' | grep -E '^lib(cudart|cublas|cublasLt|cudnn|nvinfer|nvinfer_plugin|nvonnxparser)\.so' | sort -u | sed 's/.*/"&"/' | paste -sd, -; }
cat >"$bin/aios-build.json" <<JSON
{
  "providers": ["tensorrt", "cuda", "cpu"],
  "requires": { "cuda": [$(needs libonnxruntime_providers_cuda.so)], "tensorrt": [$(needs libonnxruntime_providers_tensorrt.so)] },
  "tensorrtOptions": true,
  "onnxruntime": "${ORT_TAG#v}",
  "jetpackL4t": "$l4t"
}
JSON

# --- Install -----------------------------------------------------------------------------------
sudo mkdir -p "$prefix"
(cd "$src/js/node" && npm pack --silent --pack-destination /tmp >/dev/null)
sudo tar xzf /tmp/onnxruntime-node-*.tgz -C "$prefix" --strip-components=1
sudo cp -a "$bin/." "$prefix/bin/napi-v6/linux/arm64/"
(cd "$prefix" && sudo npm install --omit=dev --ignore-scripts --no-audit --no-fund >/dev/null)
echo "installed $prefix; now: export AIOS_ONNXRUNTIME_NODE=$prefix && aios devices"
