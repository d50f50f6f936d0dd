#!/usr/bin/env bash
# Installs the CUDA 12 execution provider of onnxruntime-node once, outside node_modules, then checks
# that a session really runs on it.
#
# npm does not ship the CUDA provider libraries (libonnxruntime_providers_cuda.so and _shared.so; several
# hundred MB): onnxruntime-node's own install script downloads them from NuGet (Microsoft.ML.OnnxRuntime.Gpu.Linux,
# the same version as the package), which charflow's package.json turns off so that `npm ci` works
# offline. This script runs that download once and keeps the files in a folder of their own:
#   $CHARFLOW_CUDA_PROVIDER, else ${XDG_CACHE_HOME:-~/.cache}/charflow/onnxruntime-node-<version>-cuda12
# ORT looks for them only next to its own libonnxruntime.so.1 inside node_modules, so they are linked
# there; after `npm ci` replaces node_modules, charflow links them again by itself at the first CUDA
# use (engine/runtime/cuda-provider.ts), with no download. A new onnxruntime-node version needs this
# script again (the provider must match the ORT build).
#
# Needs: Linux x86_64; internet access to api.nuget.org for the first download (proxies via
# GLOBAL_AGENT_HTTPS_PROXY); an NVIDIA driver; the CUDA 12.x runtime (libcudart, libcublas, libcublasLt,
# libcufft, libcurand) and cuDNN 9 (libcudnn.so.9) on the loader path (the CUDA toolkit, the nvidia-*
# pip wheels, or LD_LIBRARY_PATH pointing at them). Re-running is safe.
#
# Usage: scripts/install-cuda.sh [--check]     (--check: no download, only link and check)
set -euo pipefail
cd "$(dirname "$0")/.."

ORT=node_modules/onnxruntime-node
BIN="$ORT/bin/napi-v6/linux/x64"
FILES=(libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so)
die() { echo "install-cuda: $*" >&2; exit 1; }

[[ "$(uname -s)/$(uname -m)" == "Linux/x86_64" ]] || die "the CUDA provider of onnxruntime-node exists for Linux x86_64 only (this is $(uname -s)/$(uname -m))"
command -v node >/dev/null || die "node not found"
[[ -d "$ORT" ]] || die "$ORT not found: run 'npm ci' first"
VERSION=$(node -p "require('./$ORT/package.json').version")
DIR=$(node --import tsx --input-type=module -e 'import { cudaProviderDir } from "./engine/runtime/cuda-provider.ts"; console.log(cudaProviderDir())')

have_all() { local f; for f in "${FILES[@]}"; do [[ -f "$1/$f" ]] || return 1; done; }

if [[ "${1:-}" != "--check" ]]; then
  if have_all "$DIR"; then
    echo "install-cuda: the provider for onnxruntime-node $VERSION is already in $DIR (no download)"
  else
    mkdir -p "$DIR" || die "cannot create $DIR (set CHARFLOW_CUDA_PROVIDER to a writable folder)"
    # Real files from an earlier install into node_modules are kept, not downloaded again.
    if ! have_all "$BIN" || [[ -L "$BIN/${FILES[1]}" ]]; then
      echo "install-cuda: downloading the CUDA 12 provider for onnxruntime-node $VERSION from api.nuget.org ..."
      ONNXRUNTIME_NODE_INSTALL=cuda12 node "$ORT/script/install.js" \
        || die "the download failed (it needs internet access to api.nuget.org; see the messages above)"
    fi
    for f in "${FILES[@]}" libonnxruntime_providers_tensorrt.so; do
      if [[ -f "$BIN/$f" && ! -L "$BIN/$f" ]]; then mv -f "$BIN/$f" "$DIR/$f"; fi
    done
    have_all "$DIR" || die "the download did not produce ${FILES[*]} (see the messages above)"
    echo "install-cuda: installed into $DIR"
  fi
fi

# The same linking charflow does at start-up.
node --import tsx --input-type=module -e '
  import { linkCudaProvider, ortBinaryDir, cudaProviderDir } from "./engine/runtime/cuda-provider.ts";
  const r = linkCudaProvider();
  if (r.problem) { console.error(`install-cuda: ${r.problem}`); process.exit(1); }
  console.log(`install-cuda: provider ${r.linked.length ? "linked" : "present"} in ${ortBinaryDir()} (from ${cudaProviderDir()})`);
'

# CUDA 12 and cuDNN 9: the provider loads them from the loader path when the first session starts.
missing=()
for lib in libcudart.so.12 libcublas.so.12 libcublasLt.so.12 libcufft.so.11 libcurand.so.10 libcudnn.so.9; do
  found=0
  if ldconfig -p 2>/dev/null | grep -q "^\s*$lib "; then found=1; fi
  IFS=: read -ra dirs <<< "${LD_LIBRARY_PATH:-}"
  for d in "${dirs[@]}"; do [[ -n "$d" && -e "$d/$lib" ]] && found=1; done
  [[ $found == 1 ]] || missing+=("$lib")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "install-cuda: warning: not on the loader path (ldconfig or LD_LIBRARY_PATH): ${missing[*]}; the CUDA provider needs CUDA 12 and cuDNN 9" >&2
fi

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/install-cuda: GPU: /'
else
  echo "install-cuda: warning: nvidia-smi not found; is the NVIDIA driver installed?" >&2
fi

# A trial session on the CUDA provider: y = x + [1, 2, 3, 4], built with charflow's own ONNX writer.
node --import tsx --input-type=module -e '
  import * as ort from "onnxruntime-node";
  import { Graph } from "./models/onnx/graph.ts";
  const g = new Graph({ name: "cuda_check" });
  const x = g.input("x", "float32", [1, 4]);
  g.output(g.node("Add", [x, g.floats([1, 2, 3, 4], [4])]), "y");
  try {
    const s = await ort.InferenceSession.create(g.toBytes(), { executionProviders: [{ name: "cuda", deviceId: 0 }], logSeverityLevel: 3 });
    const out = await s.run({ x: new ort.Tensor("float32", Float32Array.from([1, 1, 1, 1]), [1, 4]) });
    const y = Array.from(out.y.data);
    if (y.join() !== "2,3,4,5") throw new Error(`wrong result ${y}`);
    console.log("install-cuda: OK: a session ran on the CUDA provider");
  } catch (e) {
    console.error(`install-cuda: the CUDA provider is installed but a session could not run on it: ${e.message}`);
    console.error("install-cuda: check the NVIDIA driver and that the CUDA 12 and cuDNN 9 libraries are on the loader path (LD_LIBRARY_PATH)");
    process.exit(1);
  }
'
