#!/usr/bin/env bash
# The GPU check of issue 8, for a lent GPU machine without network (see scripts/gpu-pack.sh):
# the default workflow on the tiny and mid-size sets (fp32, and fp16 for the mid set) on CPU, CUDA
# and WebGPU (Vulkan), outputs compared with the CPU's, times per node (bench/devices.ts).
# CUDA is measured only where onnxruntime-node's CUDA provider is installed (scripts/install-cuda.sh
# needs the internet); otherwise the report says why it was not measured.
# Writes its log and devices.json to $OUT (default /tmp/gpu-check). Usage: bash scripts/gpu-check.sh [bench/devices.ts options]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1

if [[ ! -d node_modules/onnxruntime-node ]]; then
  [[ -f .gpu/node_modules.tar.xz ]] || { echo "gpu-check: no node_modules and no .gpu/node_modules.tar.xz (run scripts/gpu-pack.sh here first)"; exit 1; }
  tar -xJf .gpu/node_modules.tar.xz
fi
if ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
  for f in .gpu/libvulkan1_*.deb; do [[ -f "$f" ]] && dpkg -x "$f" /; done
  ldconfig
fi
# The NVIDIA Vulkan driver's manifest may sit outside the loader's default search path.
for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json; do
  if [[ -f "$icd" && -z "${VK_DRIVER_FILES:-}" ]]; then export VK_DRIVER_FILES="$icd"; fi
done
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

echo "== machine"
node --version; nproc; free -g | head -2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
ls /dev/nvidia0 /dev/dri 2>&1 | head -5
echo "libvulkan: $(ldconfig -p | grep -c 'libvulkan\.so\.1') entries; VK_DRIVER_FILES=${VK_DRIVER_FILES:-unset}"

echo "== devices"
ARGS=("$@")
[[ ${#ARGS[@]} -gt 0 ]] || ARGS=(--devices cpu,cuda,webgpu --sets tiny,mid,mid16 --size 512 --steps 8)
CHARFLOW_BENCH_DIR=/tmp/charflow-bench node --import tsx bench/devices.ts "${ARGS[@]}" > "$OUT/devices-summary.json"
rc=$?
cp /tmp/charflow-bench/devices.json "$OUT/" 2>/dev/null
echo "gpu-check: bench/devices.ts exit $rc; results in $OUT"
exit $rc
