#!/usr/bin/env bash
# Checks charflow on a GPU machine, which may have no internet access (scripts/gpu-pack.sh packs
# what it needs): unpacks .gpu/ when node_modules is missing, adds a Vulkan loader if the machine
# lacks one, then runs the default workflow on the tiny and mid-size sets (fp32, and fp16 for the
# mid set) on CPU, CUDA and WebGPU (Vulkan), compares the outputs with the CPU's and prints times
# per node (bench/devices.ts). First, the full-size int4/int8 FLUX check on WebGPU (scripts/quant-gpu.ts), and
# the fused / plain attention FLUX-geometry blocks at 1024x1024 on WebGPU (bench/attention-blocks.ts).
# CUDA is measured only where onnxruntime-node's CUDA provider is installed: scripts/install-cuda.sh
# downloads it (internet needed) into a folder outside node_modules; copy that folder along and point
# CHARFLOW_CUDA_PROVIDER at it here (charflow links it into ORT's folder itself). Otherwise the report
# says why CUDA was not measured.
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

# Quantized weights at full size (scripts/quant-gpu.ts): FLUX + the adapter's IP layers from synthetic
# weights in int4, then int8 if its budget allows, 2 steps at 1024x1024 on WebGPU. nvidia-smi samples the
# GPU's memory meanwhile; the peak and the seconds per step go to $OUT (quant-gpu.json, quant-gpu-peak.txt).
# QUANT_GPU=0 skips it; QUANT_GPU_ARGS replaces its options (e.g. "--reduced --device cpu" without a GPU).
if [[ "${QUANT_GPU:-1}" != 0 ]]; then
  echo "== quantized FLUX + adapter (int4, int8), full size, WebGPU"
  SMI_PID=
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/quant-gpu-memory.csv" 2>/dev/null &
    SMI_PID=$!
  fi
  # shellcheck disable=SC2086
  timeout 400 node --import tsx scripts/quant-gpu.ts --out "$OUT" --budget-s 240 ${QUANT_GPU_ARGS:-}
  echo "gpu-check: scripts/quant-gpu.ts exit $?"
  if [[ -n "$SMI_PID" ]]; then
    kill "$SMI_PID" 2>/dev/null
    peak=$(sort -n "$OUT/quant-gpu-memory.csv" | tail -1)
    echo "peak GPU memory used during the quantized runs: ${peak:-?} MiB (nvidia-smi, GPU 0, every 0.5 s)" | tee "$OUT/quant-gpu-peak.txt"
  fi
fi

# Fused attention at 1024x1024 (bench/attention-blocks.ts): one FLUX-geometry double and single block (width
# 3072, 24 heads, synthetic fp32 weights), plain MatMul -> Softmax -> MatMul against MultiHeadAttention ('fused';
# 'auto', what model sets write, takes it there too), on WebGPU, 2 steps after two warm-ups each, one process per
# run. nvidia-smi samples GPU memory meanwhile: each run's peak and its seconds per step go to
# $OUT/attention-blocks.txt. ATTN_GPU=0 skips it; ATTN_DEVICE picks another device (cuda, cpu).
if [[ "${ATTN_GPU:-1}" != 0 ]]; then
  echo "== fused vs plain attention, FLUX-geometry blocks at 1024x1024, ${ATTN_DEVICE:-webgpu}"
  : > "$OUT/attention-blocks.txt"
  for kind in double single; do
    for form in plain fused auto; do
      timeout 600 node --import tsx bench/attention-blocks.ts build "$kind" "$form" fp32 || { echo "gpu-check: building the $kind/$form block failed"; continue; }
      SMI_PID=
      if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/attn-$kind-$form-memory.csv" 2>/dev/null &
        SMI_PID=$!
      fi
      result=$(timeout 300 node --import tsx bench/attention-blocks.ts child "$kind" "$form" fp32 1024 2 "${ATTN_DEVICE:-webgpu}" 2>"$OUT/attn-$kind-$form.err" | tail -1)
      rc=$?
      peak=?
      if [[ -n "$SMI_PID" ]]; then
        kill "$SMI_PID" 2>/dev/null
        wait "$SMI_PID" 2>/dev/null
        peak=$(sort -n "$OUT/attn-$kind-$form-memory.csv" | tail -1)
      fi
      echo "$kind $form: exit $rc, ${result:-no result (see attn-$kind-$form.err)}, peak GPU memory ${peak:-?} MiB" | tee -a "$OUT/attention-blocks.txt"
    done
  done
fi

echo "== devices"
ARGS=("$@")
[[ ${#ARGS[@]} -gt 0 ]] || ARGS=(--devices cpu,cuda,webgpu --sets tiny,mid,mid16 --size 512 --steps 8)
CHARFLOW_BENCH_DIR=/tmp/charflow-bench node --import tsx bench/devices.ts "${ARGS[@]}" > "$OUT/devices-summary.json"
rc=$?
cp /tmp/charflow-bench/devices.json "$OUT/" 2>/dev/null
echo "gpu-check: bench/devices.ts exit $rc; results in $OUT"
exit $rc
