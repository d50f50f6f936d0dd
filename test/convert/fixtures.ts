// The golden tiny checkpoints arranged as a user would bring the real ones: a FLUX.1-dev Hugging Face
// folder (transformer/, vae/, text_encoder/, text_encoder_2/ as two shards + index, tokenizer/ with
// vocab.json + merges.txt, tokenizer_2/tokenizer.json), SigLIP and DINOv2 folders, the adapter .bin.
// Also writes the transformer as an original-BFL-layout single file, fused by hand here (independently
// of the converter's key map) so the test is not circular.
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { goldenConfig, goldenPath } from '../helpers/goldens.ts';
import { e2eSeqLens } from '../helpers/goldenset.ts';
import { readSafetensors, writeSafetensors } from '../../models/weights/safetensors.ts';
import { tinyTokenizerJson } from '../../models/tokenizers.ts';
import type { Tensor } from '../../models/tensor.ts';
import type { CheckpointPaths } from '../../models/convert/layouts.ts';

/** The sequence lengths of the e2e golden's text inputs. */
export const E2E_SEQ = e2eSeqLens();

function link(target: string, path: string): void {
  symlinkSync(target, path);
}

/** A tiny FLUX.1-dev folder plus the encoders and the adapter, under `root`. */
export function goldenCheckpoints(root: string): CheckpointPaths {
  const flux = join(root, 'FLUX.1-dev');
  const dir = (name: string) => {
    const d = join(flux, name);
    mkdirSync(d, { recursive: true });
    return d;
  };
  const transformer = dir('transformer');
  link(goldenPath('flux_transformer_ip', 'config.json'), join(transformer, 'config.json'));
  link(goldenPath('flux_transformer_ip', 'diffusion_pytorch_model.safetensors'), join(transformer, 'diffusion_pytorch_model.safetensors'));
  const vae = dir('vae');
  link(goldenPath('vae_decoder', 'config.json'), join(vae, 'config.json'));
  link(goldenPath('vae_decoder', 'diffusion_pytorch_model.safetensors'), join(vae, 'diffusion_pytorch_model.safetensors'));
  const clip = dir('text_encoder');
  link(goldenPath('clip_text', 'config.json'), join(clip, 'config.json'));
  link(goldenPath('clip_text', 'model.safetensors'), join(clip, 'model.safetensors'));

  // T5 as two shards and an index, as text_encoder_2/ is published.
  const t5 = dir('text_encoder_2');
  link(goldenPath('t5_encoder', 'config.json'), join(t5, 'config.json'));
  const tensors = readSafetensors(goldenPath('t5_encoder', 'model.safetensors'));
  const keys = [...tensors.keys()];
  const shards = [keys.slice(0, keys.length >> 1), keys.slice(keys.length >> 1)];
  const weightMap: Record<string, string> = {};
  shards.forEach((ks, i) => {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    writeSafetensors(join(t5, file), new Map(ks.map((k) => [k, tensors.get(k)!])), { format: 'pt' });
    for (const k of ks) weightMap[k] = file;
  });
  writeFileSync(join(t5, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));

  // CLIP tokenizer as FLUX.1-dev ships it: vocab.json + merges.txt (no tokenizer.json).
  const clipVocab = goldenConfig('clip_text')['vocab_size'] as number;
  const clipTok = tinyTokenizerJson('clip', clipVocab).model as { vocab: Record<string, number>; merges: string[] };
  const tok = dir('tokenizer');
  writeFileSync(join(tok, 'vocab.json'), JSON.stringify(clipTok.vocab));
  writeFileSync(join(tok, 'merges.txt'), ['#version: 0.2', ...clipTok.merges].join('\n') + '\n');
  writeFileSync(join(tok, 'special_tokens_map.json'), JSON.stringify({ bos_token: '<|startoftext|>', eos_token: '<|endoftext|>', pad_token: '<|endoftext|>', unk_token: '<|endoftext|>' }));
  const tok2 = dir('tokenizer_2');
  writeFileSync(join(tok2, 'tokenizer.json'), JSON.stringify(tinyTokenizerJson('t5', goldenConfig('t5_encoder')['vocab_size'] as number)));
  writeFileSync(join(flux, 'model_index.json'), JSON.stringify({ _class_name: 'FluxPipeline' }));

  const enc = (name: string) => {
    const d = join(root, name);
    mkdirSync(d, { recursive: true });
    for (const f of ['config.json', 'model.safetensors', 'preprocessor_config.json']) link(goldenPath('instantcharacter_e2e', name, f), join(d, f));
    return d;
  };
  const adapter = join(root, 'instantcharacter_ip-adapter.bin');
  link(goldenPath('ic_adapter', 'ip-adapter.bin'), adapter);
  return {
    flux, siglip: enc('siglip'), dinov2: enc('dinov2'), adapter,
    adapterConfig: goldenPath('ic_adapter', 'config.json'),
  };
}

const cat = (...ts: Tensor[]): Tensor => {
  const rows = ts.reduce((n, t) => n + t.dims[0]!, 0);
  const data = new Float32Array(ts.reduce((n, t) => n + t.data.length, 0));
  let off = 0;
  for (const t of ts) {
    data.set(t.data as Float32Array, off);
    off += t.data.length;
  }
  return { dtype: 'float32', dims: [rows, ...ts[0]!.dims.slice(1)], data };
};

/** Rows [a, b) of a float32 matrix or vector. */
const rows = (t: Tensor, a: number, b: number): Tensor => {
  const size = t.data.length / t.dims[0]!;
  return { dtype: 'float32', dims: [b - a, ...t.dims.slice(1)], data: (t.data as Float32Array).slice(a * size, b * size) };
};

/**
 * The golden transformer re-keyed to the original BFL layout (flux1-dev.safetensors), under `prefix`
 * (ComfyUI files use 'model.diffusion_model.'): q/k/v fused, single blocks' q/k/v/mlp fused, final AdaLN as (shift, scale).
 */
export function writeBflTransformer(path: string, prefix = '', extra: Map<string, Tensor> = new Map()): void {
  const d = readSafetensors(goldenPath('flux_transformer_ip', 'diffusion_pytorch_model.safetensors'));
  const cfg = goldenConfig('flux_transformer_ip');
  const C = (cfg['num_attention_heads'] as number) * (cfg['attention_head_dim'] as number);
  const out = new Map<string, Tensor>(extra);
  const put = (k: string, t: Tensor) => out.set(prefix + k, t);
  const lin = (b: string, dk: string) => {
    put(`${b}.weight`, d.get(`${dk}.weight`)!);
    put(`${b}.bias`, d.get(`${dk}.bias`)!);
  };
  const fused = (b: string, dks: string[]) => {
    put(`${b}.weight`, cat(...dks.map((k) => d.get(`${k}.weight`)!)));
    put(`${b}.bias`, cat(...dks.map((k) => d.get(`${k}.bias`)!)));
  };
  lin('img_in', 'x_embedder');
  lin('txt_in', 'context_embedder');
  lin('time_in.in_layer', 'time_text_embed.timestep_embedder.linear_1');
  lin('time_in.out_layer', 'time_text_embed.timestep_embedder.linear_2');
  lin('guidance_in.in_layer', 'time_text_embed.guidance_embedder.linear_1');
  lin('guidance_in.out_layer', 'time_text_embed.guidance_embedder.linear_2');
  lin('vector_in.in_layer', 'time_text_embed.text_embedder.linear_1');
  lin('vector_in.out_layer', 'time_text_embed.text_embedder.linear_2');
  for (let i = 0; i < (cfg['num_layers'] as number); i++) {
    const b = `double_blocks.${i}`;
    const t = `transformer_blocks.${i}`;
    lin(`${b}.img_mod.lin`, `${t}.norm1.linear`);
    lin(`${b}.txt_mod.lin`, `${t}.norm1_context.linear`);
    fused(`${b}.img_attn.qkv`, [`${t}.attn.to_q`, `${t}.attn.to_k`, `${t}.attn.to_v`]);
    fused(`${b}.txt_attn.qkv`, [`${t}.attn.add_q_proj`, `${t}.attn.add_k_proj`, `${t}.attn.add_v_proj`]);
    put(`${b}.img_attn.norm.query_norm.scale`, d.get(`${t}.attn.norm_q.weight`)!);
    put(`${b}.img_attn.norm.key_norm.scale`, d.get(`${t}.attn.norm_k.weight`)!);
    put(`${b}.txt_attn.norm.query_norm.scale`, d.get(`${t}.attn.norm_added_q.weight`)!);
    put(`${b}.txt_attn.norm.key_norm.scale`, d.get(`${t}.attn.norm_added_k.weight`)!);
    lin(`${b}.img_attn.proj`, `${t}.attn.to_out.0`);
    lin(`${b}.txt_attn.proj`, `${t}.attn.to_add_out`);
    lin(`${b}.img_mlp.0`, `${t}.ff.net.0.proj`);
    lin(`${b}.img_mlp.2`, `${t}.ff.net.2`);
    lin(`${b}.txt_mlp.0`, `${t}.ff_context.net.0.proj`);
    lin(`${b}.txt_mlp.2`, `${t}.ff_context.net.2`);
  }
  for (let i = 0; i < (cfg['num_single_layers'] as number); i++) {
    const b = `single_blocks.${i}`;
    const t = `single_transformer_blocks.${i}`;
    fused(`${b}.linear1`, [`${t}.attn.to_q`, `${t}.attn.to_k`, `${t}.attn.to_v`, `${t}.proj_mlp`]);
    lin(`${b}.linear2`, `${t}.proj_out`);
    put(`${b}.norm.query_norm.scale`, d.get(`${t}.attn.norm_q.weight`)!);
    put(`${b}.norm.key_norm.scale`, d.get(`${t}.attn.norm_k.weight`)!);
    lin(`${b}.modulation.lin`, `${t}.norm.linear`);
  }
  lin('final_layer.linear', 'proj_out');
  for (const s of ['weight', 'bias']) {
    const ada = d.get(`norm_out.linear.${s}`)!; // (scale, shift) in diffusers
    put(`final_layer.adaLN_modulation.1.${s}`, cat(rows(ada, C, 2 * C), rows(ada, 0, C)));
  }
  writeSafetensors(path, out, { format: 'pt' });
}
