// Peak RSS of converting a GGUF FLUX transformer: a full-width FLUX (C = 3072, FLUX.1-dev's tensors, so its
// largest tensor, single_blocks' linear1 [21504, 3072], too) with one double and one single block, written as a
// random Q4_K GGUF, then built into a quantized flux graph with external data as the converter does.
//   node --import tsx scripts/gguf-rss.ts [dir]      (writes the GGUF, then converts it in a child process)
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { FULL_FLUX, buildFlux } from '../models/flux.ts';
import { Graph } from '../models/onnx/graph.ts';
import { openFluxTransformer } from '../models/convert/layouts.ts';
import { decodedOnly, writeGgufFlux } from '../bench/gguf.ts';
import { peakRssKiB } from '../bench/lib/rss.ts';

const [mode, dir = join(tmpdir(), 'charflow-gguf-rss')] = process.argv[2] === 'convert' ? ['convert', process.argv[3]] : ['make', process.argv[2]];
const file = join(dir!, 'flux-fullwidth-q4k.gguf');

if (mode === 'make') {
  mkdirSync(dir!, { recursive: true });
  writeGgufFlux(file, { ...FULL_FLUX, numLayers: 1, numSingleLayers: 1 });
  console.log(`${file}: ${(statSync(file).size / 1e6).toFixed(0)} MB`);
  const out = execFileSync(process.execPath, ['--import', 'tsx', process.argv[1]!, 'convert', dir!], { encoding: 'utf8' });
  console.log(out.trim());
  rmSync(dir!, { recursive: true, force: true });
} else {
  const part = openFluxTransformer(file);
  // CHARFLOW_RSS_DECODED=1: the same weights decoded and quantized by charflow (what a float checkpoint costs).
  if (process.env.CHARFLOW_RSS_DECODED) part.weights = decodedOnly(part.weights);
  const g = new Graph({ name: 'flux', quant: { bits: 4, block: 128 }, external: { dir: dir!, file: 'flux.onnx.data' } });
  buildFlux({ g, w: part.weights }, undefined, part.cfg);
  g.save(join(dir!, 'flux.onnx'));
  part.weights.close?.();
  const data = statSync(join(dir!, 'flux.onnx.data')).size;
  console.log(`converted to ${(data / 1e6).toFixed(0)} MB of MatMulNBits weights; peak RSS ${(peakRssKiB() / 1024).toFixed(0)} MB`);
}
