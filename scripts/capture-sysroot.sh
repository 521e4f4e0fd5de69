#!/usr/bin/env bash
# Copies the files aios's device probes read from this machine into a folder that
# `aios devices --sysroot DIR` (and the test suite) can replay: /proc and /etc text files, the
# sysfs attributes of PCI/USB accelerators, device-node names, library paths, and the output of
# the query tools probes run (nvidia-smi, xbutil) in DIR/.commands.json.
# Nothing is changed on this machine. Attach the folder to a bug report about device detection.
#
# usage: scripts/capture-sysroot.sh OUT_DIR
set -euo pipefail
out=${1:?usage: capture-sysroot.sh OUT_DIR}
mkdir -p "$out"

copy() { # copy a readable file, keeping its path
  local f=$1
  [ -r "$f" ] || return 0
  mkdir -p "$out$(dirname "$f")"
  cat "$f" >"$out$f" 2>/dev/null || rm -f "$out$f"
}
touch_node() { # device nodes and libraries: only their existence matters
  local f=$1
  mkdir -p "$out$(dirname "$f")"
  : >"$out$f"
}

for f in /proc/cpuinfo /proc/meminfo /proc/driver/nvidia/version /etc/os-release /etc/nv_tegra_release \
         /proc/device-tree/model /proc/device-tree/compatible; do copy "$f"; done
for f in /proc/driver/nvidia/gpus/*/information /etc/ld.so.conf.d/*.conf; do copy "$f"; done

# PCI accelerators: NVIDIA 10de, Coral/Global Unichip 1ac1, Xilinx 10ee.
for dev in /sys/bus/pci/devices/*; do
  vendor=$(cat "$dev/vendor" 2>/dev/null || true)
  case "$vendor" in 0x10de|0x1ac1|0x10ee) ;; *) continue ;; esac
  for attr in vendor device class subsystem_vendor subsystem_device; do copy "$dev/$attr"; done
  if [ -L "$dev/driver" ]; then ln -sfn "$(readlink "$dev/driver")" "$out$dev/driver"; fi
done
# USB Edge TPUs before (1a6e:089a) and after (18d1:9302) firmware load.
for dev in /sys/bus/usb/devices/*; do
  [ -r "$dev/idVendor" ] || continue
  id="$(cat "$dev/idVendor"):$(cat "$dev/idProduct")"
  case "$id" in 1a6e:089a|18d1:9302) ;; *) continue ;; esac
  for attr in idVendor idProduct manufacturer product serial busnum devnum speed; do copy "$dev/$attr"; done
done
for f in /sys/class/apex/*/temp /sys/class/fpga_manager/*/name /sys/class/fpga_manager/*/state; do copy "$f"; done

for f in /dev/nvidia* /dev/apex_* /dev/xclmgmt* /dev/nvhost-ctrl-gpu /dev/dri/renderD*; do
  [ -e "$f" ] && touch_node "$f"
done
# Libraries the HAL looks for, at the paths the loader knows them by.
if command -v ldconfig >/dev/null; then
  ldconfig -p | awk '/=>/ {print $NF}' | grep -E 'lib(cuda|cudart|cublas|cublasLt|cudnn|nvinfer|edgetpu|xrt_coreutil|tensorflowlite_c)\.so' | while read -r lib; do
    touch_node "$lib"
  done
fi

# Query tools, recorded as the probes call them (plain shell: the machine may have no node).
json_string() { # stdin -> a JSON string literal
  printf '"'
  sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/\\t/g' -e 's/\r/\\r/g' | awk '{ printf "%s\\n", $0 }'
  printf '"'
}
record() { # record CMD ARGS...: one entry of .commands.json, or nothing when CMD is not installed
  command -v "$1" >/dev/null || return 0
  local output code=0
  output=$("$@" 2>/dev/null) || code=$?
  printf '%s  %s: {"stdout": %s, "exitCode": %d}' "$sep" "$(printf '%s' "$*" | json_string | sed 's/\\n"$/"/')" "$(printf '%s\n' "$output" | json_string)" "$code"
  sep=$',\n'
}
sep=''
{
  echo '{'
  record nvidia-smi --query-gpu=index,pci.bus_id,name,memory.total,driver_version,compute_cap,uuid --format=csv,noheader,nounits
  printf '\n}\n'
} >"$out/.commands.json"
echo "captured into $out"
