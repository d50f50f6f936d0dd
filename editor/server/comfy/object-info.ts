// /object_info: charflow node types described the way ComfyUI describes its own, so ComfyUI clients
// can list them, build prompts and draw widgets. Link inputs are [TYPE]; parameters are
// [INT|FLOAT|STRING|BOOLEAN, options] or, for a fixed choice, [[choices...], options].
import { PARAM_SOCKET, type NodeDef, type ParamSchema } from '../../../engine/node.ts';

export type InputSpec = [string | (string | number)[]] | [string | (string | number)[], Record<string, unknown>];

export interface ObjectInfo {
  input: { required: Record<string, InputSpec>; optional?: Record<string, InputSpec>; hidden?: Record<string, InputSpec> };
  input_order: { required: string[]; optional?: string[] };
  output: string[];
  output_is_list: boolean[];
  output_name: string[];
  output_tooltips: string[];
  name: string;
  display_name: string;
  description: string;
  python_module: string;
  category: string;
  output_node: boolean;
  deprecated: boolean;
  experimental: boolean;
}

/**
 * Choices the server knows: image parameters offer the files of the inputs folder, model-set parameters the
 * installed sets (each plus the declared default, e.g. a bundled example or the tiny set before it is written),
 * saved-character parameters the saved characters' names, LoRA parameters the files of the loras folder (as
 * ComfyUI's lora_name COMBO does).
 */
export interface ParamChoices {
  images: readonly string[];
  modelSets?: readonly string[];
  characters?: readonly string[];
  loras?: readonly string[];
}

export function paramSpec(p: ParamSchema, choices: ParamChoices): InputSpec {
  const opts: Record<string, unknown> = {};
  if (p.default !== undefined) opts.default = p.default;
  if (p.description) opts.tooltip = p.description;
  if (p.format === 'lora') {
    const loras = choices.loras ?? [];
    return [[...loras], { ...opts, ...(loras.length ? { default: loras[0] } : {}) }];
  }
  if (p.format === 'image') {
    const files = typeof p.default === 'string' && p.default !== '' && !choices.images.includes(p.default) ? [p.default, ...choices.images] : [...choices.images];
    return [files, { ...opts, image_upload: true }];
  }
  if (p.format === 'character') return [[...(choices.characters ?? [])], opts];
  if (p.format === 'modelset') {
    const modelSets = choices.modelSets ?? [];
    const sets = typeof p.default === 'string' && !modelSets.includes(p.default) ? [p.default, ...modelSets] : [...modelSets];
    return [sets, opts];
  }
  if (p.enum) return [[...p.enum], opts];
  if (p.type === 'integer' || p.type === 'number') {
    if (p.minimum !== undefined) opts.min = p.minimum;
    if (p.maximum !== undefined) opts.max = p.maximum;
    opts.step = p.multipleOf ?? (p.type === 'integer' ? 1 : 0.01);
    if (p.format === 'seed') opts.control_after_generate = true;
  } else if (p.type === 'string') {
    opts.multiline = p.format === 'prompt';
  }
  return [PARAM_SOCKET[p.type], opts];
}

export function objectInfo<S>(def: NodeDef<S>, choices: ParamChoices): ObjectInfo {
  const required: Record<string, InputSpec> = {};
  const optional: Record<string, InputSpec> = {};
  for (const [name, d] of Object.entries(def.inputs)) {
    const spec: InputSpec = d.description ? [d.type, { tooltip: d.description }] : [d.type];
    (d.optional ? optional : required)[name] = spec;
  }
  // A parameter with a default always has a value, as ComfyUI's widgets do: it is "required".
  for (const [name, p] of Object.entries(def.params)) {
    (p.optional && p.default === undefined ? optional : required)[name] = paramSpec(p, choices);
  }
  const outputs = Object.entries(def.outputs);
  const info: ObjectInfo = {
    input: { required },
    input_order: { required: Object.keys(required) },
    output: outputs.map(([, o]) => o.type),
    output_is_list: outputs.map(() => false),
    output_name: outputs.map(([n]) => n),
    output_tooltips: outputs.map(([, o]) => o.description ?? ''),
    name: def.type,
    display_name: def.displayName ?? def.type,
    description: def.description,
    python_module: 'charflow',
    category: def.category,
    output_node: def.output === true,
    deprecated: false,
    experimental: false,
  };
  if (Object.keys(optional).length) {
    info.input.optional = optional;
    info.input_order.optional = Object.keys(optional);
  }
  return info;
}

export function allObjectInfo<S>(registry: ReadonlyMap<string, NodeDef<S>>, choices: ParamChoices): Record<string, ObjectInfo> {
  const out: Record<string, ObjectInfo> = {};
  for (const def of registry.values()) out[def.type] = objectInfo(def, choices);
  return out;
}

/** The input spec of one input of a type (for extra_info.input_config in validation errors). */
export function inputConfig<S>(registry: ReadonlyMap<string, NodeDef<S>>, type: string, field: string): InputSpec | undefined {
  const def = registry.get(type);
  if (!def) return undefined;
  if (Object.hasOwn(def.inputs, field)) {
    const d = def.inputs[field]!;
    return d.description ? [d.type, { tooltip: d.description }] : [d.type];
  }
  return Object.hasOwn(def.params, field) ? paramSpec(def.params[field]!, { images: [] }) : undefined;
}
