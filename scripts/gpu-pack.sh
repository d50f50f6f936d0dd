#!/usr/bin/env bash
# Packs charflow's dependencies for a GPU machine without internet access, into .gpu/ (git-ignored):
# the installed node_modules for Linux x86_64, without other platforms' binaries and the
# development-only packages (xz-compressed: about 27 MB instead of several hundred), and Debian's
# Vulkan loader (libvulkan1), which such a machine may lack for WebGPU.
# Run it after `npm ci` on a Linux x86_64 machine with internet access; copy the repository with its
# .gpu/ folder to the GPU machine (any way you like: scp, rsync, a USB disk) and run
# `bash scripts/gpu-check.sh` there, which unpacks .gpu/ when node_modules is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -d node_modules/onnxruntime-node ]] || { echo "gpu-pack: run npm ci first" >&2; exit 1; }
rm -rf .gpu && mkdir -p .gpu
ORT_BIN=node_modules/onnxruntime-node/bin/napi-v6
tar -cf - \
  --exclude="$ORT_BIN/darwin" --exclude="$ORT_BIN/win32" --exclude="$ORT_BIN/linux/arm64" \
  --exclude=node_modules/typescript --exclude=node_modules/playwright-core --exclude=node_modules/vite \
  --exclude=node_modules/vitest --exclude=node_modules/@vitest --exclude=node_modules/rolldown \
  --exclude=node_modules/@rolldown --exclude='node_modules/lightningcss*' --exclude=node_modules/@types \
  --exclude=node_modules/fast-check --exclude=node_modules/@stable-canvas --exclude=node_modules/@comfyorg \
  --exclude=node_modules/better-sqlite3/deps --exclude=node_modules/better-sqlite3/src \
  node_modules | xz -T0 -6 > .gpu/node_modules.tar.xz
(cd .gpu && apt-get download libvulkan1 >/dev/null 2>&1) || echo "gpu-pack: warning: could not download libvulkan1 (the GPU machine must have a Vulkan loader)" >&2
du -sh .gpu/*
