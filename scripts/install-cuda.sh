#!/usr/bin/env bash
# Installs the CUDA 12 execution provider of onnxruntime-node, then checks that a session really runs on it.
#
# npm does not ship the CUDA provider libraries (libonnxruntime_providers_cuda.so, _shared.so, _tensorrt.so):
# they are too large for the registry. onnxruntime-node's own install script (node_modules/onnxruntime-node/
# script/install.js) downloads them from NuGet (Microsoft.ML.OnnxRuntime.Gpu.Linux, same version as the
# package) into node_modules/onnxruntime-node/bin/napi-v6/linux/x64/ when asked to with
# ONNXRUNTIME_NODE_INSTALL=cuda12. This repository's .npmrc sets onnxruntime-node-install=skip so that a plain
# `npm install` works offline; this script overrides that for one run.
#
# Needs: Linux x86_64, internet access (api.nuget.org; proxies via GLOBAL_AGENT_HTTPS_PROXY), an NVIDIA driver,
# and the CUDA 12.x runtime and cuDNN 9 libraries on the loader path (e.g. the nvidia-* pip wheels, the CUDA
# toolkit, or LD_LIBRARY_PATH pointing at them). Re-running is safe; `--check` only runs the check.
#
# Usage: scripts/install-cuda.sh [--check]
set -euo pipefail
cd "$(dirname "$0")/.."

ORT=node_modules/onnxruntime-node
BIN="$ORT/bin/napi-v6/linux/x64"
die() { echo "install-cuda: $*" >&2; exit 1; }

[[ "$(uname -s)/$(uname -m)" == "Linux/x86_64" ]] || die "the CUDA provider of onnxruntime-node exists for Linux x86_64 only (this is $(uname -s)/$(uname -m))"
[[ -d "$ORT" ]] || die "$ORT not found: run 'npm install' first"
command -v node >/dev/null || die "node not found"

if [[ "${1:-}" != "--check" ]]; then
  echo "install-cuda: downloading the CUDA 12 provider for onnxruntime-node $(node -p "require('./$ORT/package.json').version") ..."
  ONNXRUNTIME_NODE_INSTALL=cuda12 node "$ORT/script/install.js"
fi

for f in libonnxruntime_providers_cuda.so libonnxruntime_providers_shared.so; do
  [[ -f "$BIN/$f" ]] || die "$BIN/$f is missing (run this script without --check to install it; see any messages above)"
done
echo "install-cuda: provider libraries present in $BIN"

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
    console.error("install-cuda: check the NVIDIA driver and that the CUDA 12 and cuDNN 9 libraries are on LD_LIBRARY_PATH");
    process.exit(1);
  }
'
