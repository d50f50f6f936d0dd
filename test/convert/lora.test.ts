// Style LoRAs merged into the FLUX transformer at conversion: W' = W + w * (alpha / rank) * B A, checked
// numerically per key, for diffusers/PEFT keys and for kohya keys on the fused BFL modules (split like the
// weights, the final AdaLN's halves swapped). Also the LDM (ae.safetensors) VAE layout.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { goldenConfig, goldenPath } from '../helpers/goldens.ts';
import { SafetensorsFile, readSafetensors, writeSafetensors } from '../../models/weights/safetensors.ts';
import { fluxConfigFromJson } from '../../models/flux.ts';
import { mergeLoras, parseLoraArg } from '../../models/convert/lora.ts';
import { openVae } from '../../models/convert/layouts.ts';
import { convertCheckpoints } from '../../models/convert/convert.ts';
import { writeModelSet } from '../../models/modelset.ts';
import { goldenSpec } from '../helpers/goldenset.ts';
import { E2E_SEQ, goldenCheckpoints } from './fixtures.ts';
import { type Tensor, toFloat32 } from '../../models/tensor.ts';

const cfg = fluxConfigFromJson(goldenConfig('flux_transformer_ip'));
const C = cfg.numHeads * cfg.headDim;
/** The last double and single block (the LoRAs target blocks other than the first). */
const D = cfg.numLayers - 1;
const S = cfg.numSingleLayers - 1;
let root: string;
let base: SafetensorsFile;

/** Deterministic small values. */
function matrix(rows: number, cols: number, seed: number): Tensor {
  const data = Float32Array.from({ length: rows * cols }, (_, i) => Math.sin(seed * 12.9898 + i * 78.233) * 0.05);
  return { dtype: 'float32', dims: [rows, cols], data };
}
/** Byte equality of two tensors' data (vitest's deep equality is slow on millions of elements). */
const sameData = (a: Tensor, b: Tensor): boolean =>
  Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength).equals(Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength));
const scalar = (v: number): Tensor => ({ dtype: 'float32', dims: [], data: Float32Array.of(v) });

/** max |got - (W + scale * B[rows] A)| over the matrix. */
function mergeError(got: Tensor, w: Tensor, up: Tensor, down: Tensor, scale: number, rowStart = 0): number {
  const [out, inF] = w.dims as [number, number];
  const r = down.dims[0]!;
  const [g, W, B, A] = [toFloat32(got), toFloat32(w), toFloat32(up), toFloat32(down)];
  let max = 0;
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inF; i++) {
      let d = 0;
      for (let j = 0; j < r; j++) d += B[(rowStart + o) * r + j]! * A[j * inF + i]!;
      max = Math.max(max, Math.abs(g[o * inF + i]! - (W[o * inF + i]! + scale * d)));
    }
  }
  return max;
}

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'charflow-lora-'));
  base = new SafetensorsFile(goldenPath('flux_transformer_ip', 'diffusion_pytorch_model.safetensors'));
});

afterAll(() => {
  base?.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('LoRA merge', () => {
  it('parses FILE:WEIGHT', () => {
    expect(parseLoraArg('style.safetensors:0.8')).toEqual({ path: 'style.safetensors', weight: 0.8 });
    expect(parseLoraArg('C:\\loras\\ghibli.safetensors')).toEqual({ path: 'C:\\loras\\ghibli.safetensors', weight: 1 });
    expect(parseLoraArg('a.safetensors:-1.5')).toEqual({ path: 'a.safetensors', weight: -1.5 });
  });

  it('merges diffusers/PEFT LoRAs into exactly the targeted weights (alpha = rank)', () => {
    const r = 4;
    const t = new Map<string, Tensor>([
      ['transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight', matrix(r, C, 1)],
      ['transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight', matrix(C, r, 2)],
      [`transformer.transformer_blocks.${D}.ff.net.2.lora_A.weight`, matrix(r, 4 * C, 3)],
      [`transformer.transformer_blocks.${D}.ff.net.2.lora_B.weight`, matrix(C, r, 4)],
    ]);
    const file = join(root, 'peft.safetensors');
    writeSafetensors(file, t);
    const { source, targets, close } = mergeLoras(base, [{ path: file, weight: 0.7 }], cfg);
    expect(targets.sort()).toEqual(['single_transformer_blocks.0.attn.to_q.weight', `transformer_blocks.${D}.ff.net.2.weight`]);
    for (const key of base.keys()) {
      const got = source.get(key);
      if (targets.includes(key)) continue;
      expect(sameData(got, base.get(key)), key).toBe(true); // untouched
    }
    const e1 = mergeError(source.get('single_transformer_blocks.0.attn.to_q.weight'), base.get('single_transformer_blocks.0.attn.to_q.weight'),
      t.get('transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight')!, t.get('transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight')!, 0.7);
    const e2 = mergeError(source.get(`transformer_blocks.${D}.ff.net.2.weight`), base.get(`transformer_blocks.${D}.ff.net.2.weight`),
      t.get(`transformer.transformer_blocks.${D}.ff.net.2.lora_B.weight`)!, t.get(`transformer.transformer_blocks.${D}.ff.net.2.lora_A.weight`)!, 0.7);
    console.log('PEFT merge max error', e1, e2);
    expect(Math.max(e1, e2)).toBeLessThan(1e-6);
    close();
  });

  it('splits kohya LoRAs on fused BFL modules like the weights (qkv, linear1, swapped final AdaLN)', () => {
    const r = 8;
    const alpha = 4;
    const w = 1.3;
    const t = new Map<string, Tensor>([
      ['lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight', matrix(r, C, 5)],
      ['lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight', matrix(3 * C, r, 6)],
      ['lora_unet_double_blocks_0_img_attn_qkv.alpha', scalar(alpha)],
      [`lora_unet_single_blocks_${S}_linear1.lora_down.weight`, matrix(r, C, 7)],
      [`lora_unet_single_blocks_${S}_linear1.lora_up.weight`, matrix(7 * C, r, 8)],
      [`lora_unet_single_blocks_${S}_linear1.alpha`, scalar(alpha)],
      ['lora_unet_final_layer_adaLN_modulation_1.lora_down.weight', matrix(r, C, 9)],
      ['lora_unet_final_layer_adaLN_modulation_1.lora_up.weight', matrix(2 * C, r, 10)],
      ['lora_unet_final_layer_adaLN_modulation_1.alpha', scalar(alpha)],
      ['lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight', matrix(r, 8, 11)],
      ['lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight', matrix(8, r, 12)],
    ]);
    const file = join(root, 'kohya.safetensors');
    writeSafetensors(file, t);
    const warnings: string[] = [];
    const { source, targets, close } = mergeLoras(base, [{ path: file, weight: w }], cfg, (m) => warnings.push(m));
    expect(warnings.join()).toMatch(/2 text-encoder LoRA tensors ignored/);
    const scale = w * (alpha / r);
    const check = (key: string, bfl: string, rowStart: number) =>
      mergeError(source.get(key), base.get(key), t.get(`${bfl}.lora_up.weight`)!, t.get(`${bfl}.lora_down.weight`)!, scale, rowStart);
    const errs = [
      check('transformer_blocks.0.attn.to_q.weight', 'lora_unet_double_blocks_0_img_attn_qkv', 0),
      check('transformer_blocks.0.attn.to_k.weight', 'lora_unet_double_blocks_0_img_attn_qkv', C),
      check('transformer_blocks.0.attn.to_v.weight', 'lora_unet_double_blocks_0_img_attn_qkv', 2 * C),
      check(`single_transformer_blocks.${S}.attn.to_q.weight`, `lora_unet_single_blocks_${S}_linear1`, 0),
      check(`single_transformer_blocks.${S}.attn.to_v.weight`, `lora_unet_single_blocks_${S}_linear1`, 2 * C),
      check(`single_transformer_blocks.${S}.proj_mlp.weight`, `lora_unet_single_blocks_${S}_linear1`, 3 * C),
    ];
    // norm_out.linear is (scale, shift); BFL's rows are (shift, scale): scale rows come from BFL rows C..2C.
    const ada = 'lora_unet_final_layer_adaLN_modulation_1';
    const got = source.get('norm_out.linear.weight');
    const half = (t0: Tensor, a: number): Tensor => ({ dtype: 'float32', dims: [C, C], data: toFloat32(t0).slice(a * C, (a + C) * C) });
    errs.push(mergeError(half(got, 0), half(base.get('norm_out.linear.weight'), 0), t.get(`${ada}.lora_up.weight`)!, t.get(`${ada}.lora_down.weight`)!, scale, C));
    errs.push(mergeError(half(got, C), half(base.get('norm_out.linear.weight'), C), t.get(`${ada}.lora_up.weight`)!, t.get(`${ada}.lora_down.weight`)!, scale, 0));
    console.log('kohya merge max error', Math.max(...errs));
    expect(Math.max(...errs)).toBeLessThan(1e-6);
    expect(targets.length).toBe(3 + 4 + 1);
    expect(sameData(source.get('transformer_blocks.0.attn.add_q_proj.weight'), base.get('transformer_blocks.0.attn.add_q_proj.weight'))).toBe(true);
    close();
  });

  it('refuses LoRA formats it would silently get wrong', () => {
    const file = join(root, 'lokr.safetensors');
    writeSafetensors(file, new Map([['lora_unet_double_blocks_0_img_attn_qkv.lokr_w1', matrix(2, 2, 1)]]));
    expect(() => mergeLoras(base, [{ path: file, weight: 1 }], cfg)).toThrow(/unsupported LoRA tensors.*lokr_w1/);
    const other = join(root, 'sdxl.safetensors');
    writeSafetensors(other, new Map([
      ['lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight', matrix(2, 4, 1)],
      ['lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight', matrix(4, 2, 1)],
    ]));
    expect(() => mergeLoras(base, [{ path: other, weight: 1 }], cfg)).toThrow(/no LoRA module matches a FLUX transformer layer/);
  });

  it('converts a set with a LoRA: only the flux graph changes', async () => {
    const paths = goldenCheckpoints(join(root, 'ck'));
    const file = join(root, 'peft2.safetensors');
    writeSafetensors(file, new Map([
      ['transformer.transformer_blocks.0.attn.to_out.0.lora_A.weight', matrix(2, C, 13)],
      ['transformer.transformer_blocks.0.attn.to_out.0.lora_B.weight', matrix(C, 2, 14)],
    ]));
    const models = join(root, 'models');
    const golden = await writeModelSet(goldenSpec(E2E_SEQ), join(models, 'golden'));
    const { manifest } = await convertCheckpoints({ ...paths, ...E2E_SEQ, modelsDir: models, name: 'styled', dtype: 'float32', loras: [{ path: file, weight: 0.5 }] });
    expect(manifest.files.flux.sha256).not.toBe(golden.files.flux.sha256);
    for (const c of ['siglip', 'dinov2', 'adapter_static', 'adapter_time', 'vae', 't5', 'clip'] as const) expect(manifest.files[c].sha256, c).toBe(golden.files[c].sha256);
  }, 300_000);
});

describe('VAE in the original (LDM) layout of ae.safetensors', () => {
  it('reads as the diffusers decoder', () => {
    const d = readSafetensors(goldenPath('vae_decoder', 'diffusion_pytorch_model.safetensors'));
    const vcfg = goldenConfig('vae_decoder');
    const levels = (vcfg['block_out_channels'] as number[]).length;
    const perBlock = (vcfg['layers_per_block'] as number) + 1;
    const ldm = new Map<string, Tensor>();
    const resnet = (to: string, from: string) => {
      for (const [a, b] of [['norm1', 'norm1'], ['conv1', 'conv1'], ['norm2', 'norm2'], ['conv2', 'conv2'], ['nin_shortcut', 'conv_shortcut']]) {
        for (const s of ['weight', 'bias']) if (d.has(`${from}.${b}.${s}`)) ldm.set(`${to}.${a}.${s}`, d.get(`${from}.${b}.${s}`)!);
      }
    };
    for (const s of ['weight', 'bias']) {
      ldm.set(`decoder.conv_in.${s}`, d.get(`decoder.conv_in.${s}`)!);
      ldm.set(`decoder.norm_out.${s}`, d.get(`decoder.conv_norm_out.${s}`)!);
      ldm.set(`decoder.conv_out.${s}`, d.get(`decoder.conv_out.${s}`)!);
      ldm.set(`decoder.mid.attn_1.norm.${s}`, d.get(`decoder.mid_block.attentions.0.group_norm.${s}`)!);
    }
    resnet('decoder.mid.block_1', 'decoder.mid_block.resnets.0');
    resnet('decoder.mid.block_2', 'decoder.mid_block.resnets.1');
    for (const [a, b] of [['q', 'to_q'], ['k', 'to_k'], ['v', 'to_v'], ['proj_out', 'to_out.0']]) {
      const w = d.get(`decoder.mid_block.attentions.0.${b}.weight`)!;
      ldm.set(`decoder.mid.attn_1.${a}.weight`, { ...w, dims: [...w.dims, 1, 1] }); // 1x1 convs in LDM
      ldm.set(`decoder.mid.attn_1.${a}.bias`, d.get(`decoder.mid_block.attentions.0.${b}.bias`)!);
    }
    for (let j = 0; j < levels; j++) {
      for (let r = 0; r < perBlock; r++) resnet(`decoder.up.${levels - 1 - j}.block.${r}`, `decoder.up_blocks.${j}.resnets.${r}`);
      for (const s of ['weight', 'bias']) {
        const k = `decoder.up_blocks.${j}.upsamplers.0.conv.${s}`;
        if (d.has(k)) ldm.set(`decoder.up.${levels - 1 - j}.upsample.conv.${s}`, d.get(k)!);
      }
    }
    const dir = join(root, 'ae');
    mkdirSync(dir);
    writeSafetensors(join(dir, 'ae.safetensors'), ldm);
    const part = openVae(join(dir, 'ae.safetensors'));
    // ae.safetensors carries no config: FULL_VAE is assumed, so compare key by key against the tiny decoder.
    for (const [k, t] of d) {
      if (!k.startsWith('decoder.')) continue;
      expect(part.weights.shape(k), k).toEqual(t.dims);
      expect(sameData(part.weights.get(k), t), k).toBe(true);
    }
    part.weights.close?.();
  });
});
