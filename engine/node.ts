// The contract between node types and the engine. The executor, validator, CLI and server know
// node types only through these declarations; nothing in engine/ names a particular node.

/** A socket type name. Links connect an output to an input of the same type ('*' accepts any). */
export type SocketType = string;

/** Socket types that constant parameters have, so a link of that type may feed a parameter. */
export const PARAM_SOCKET = {
  number: 'FLOAT',
  integer: 'INT',
  string: 'STRING',
  boolean: 'BOOLEAN',
} as const;

/**
 * A constant parameter, described by a JSON Schema subset that the editor renders as a widget.
 * `format` picks a richer widget: 'prompt' (multiline text), 'seed' (integer with randomise),
 * 'image' (file picker with upload, the value is a path inside the inputs folder), 'color' (#rrggbb),
 * 'character' (the name of a saved character, <data>/characters/NAME.safetensors), 'modelset' (an installed
 * model set), 'lora' (a choice of the LoRA files in the data folder's loras folder).
 */
export interface ParamSchema {
  type: keyof typeof PARAM_SOCKET;
  description?: string;
  default?: number | string | boolean;
  minimum?: number;
  maximum?: number;
  multipleOf?: number;
  enum?: readonly (string | number)[];
  maxLength?: number;
  pattern?: string;
  format?: 'prompt' | 'seed' | 'image' | 'color' | 'character' | 'modelset' | 'lora';
  /** Optional parameters may be left out even without a default; run() then sees undefined. */
  optional?: boolean;
}

/** A link-only input. */
export interface InputDecl {
  type: SocketType;
  description?: string;
  optional?: boolean;
}

export interface OutputDecl {
  type: SocketType;
  description?: string;
}

/** A preview image that a long node may attach to its progress (encoded PNG or JPEG). */
export interface PreviewImage {
  format: 'png' | 'jpeg';
  data: Uint8Array;
}

export interface Logger {
  info(message: string): void;
  warn(message: string): void;
}

/**
 * What the engine hands to a node while it runs. `services` carries host-provided objects such as
 * the model runtime; the engine passes it through untouched, so it stays ignorant of models.
 */
export interface NodeContext<S = unknown> {
  nodeId: string;
  signal: AbortSignal;
  progress(step: number, total: number, preview?: PreviewImage): void;
  log: Logger;
  services: S;
  /** The workflow being run, for output nodes that embed it (e.g. in a PNG). */
  workflow: unknown;
}

/** Values a node receives: every declared input and parameter, keyed by name. */
export type NodeInputs = Record<string, unknown>;
export type NodeOutputs = Record<string, unknown>;

export interface NodeDef<S = unknown> {
  /** Type name as it appears in workflow files. */
  type: string;
  /** Bumped when the node's behaviour changes, so cached outputs of the old behaviour are not reused. */
  version: number;
  category: string;
  displayName?: string;
  description: string;
  inputs: Record<string, InputDecl>;
  params: Record<string, ParamSchema>;
  outputs: Record<string, OutputDecl>;
  /** Output nodes are the default targets of a run. */
  output?: boolean;
  /** False for nodes whose result must not be reused (e.g. random without a seed). Default true. */
  cacheable?: boolean;
  /**
   * Extra material for the cache key that constants alone do not capture, such as the content hash
   * of a file that a parameter names. Runs before the node; may throw to reject the input.
   */
  cacheKey?(inputs: NodeInputs, services: S): Promise<string>;
  /** Rough byte size of an output value, for the cache budget. */
  sizeOf?(value: unknown): number;
  /**
   * Checks that need no computed value, run for every needed node before any node of the run starts, so a
   * request that cannot work (e.g. a batch too large for the memory budget) fails before models load.
   * `consts` are the node's constant parameters; `upstream(input)` the constant parameters of the node linked
   * to `input` (undefined when the input is not linked). May throw NodeInputError.
   */
  preflight?(consts: NodeInputs, services: S, upstream: (input: string) => NodeInputs | undefined): Promise<void> | void;
  /**
   * Linked inputs this node will not read, given its constants, each with the reason (e.g. a negative prompt
   * while true CFG is off). The executor leaves them out of run()'s inputs, does not wait for them, and runs
   * their upstream only if something else needs it; it logs a warning naming the input and the reason.
   */
  unusedInputs?(consts: NodeInputs): Record<string, string>;
  /**
   * A small JSON summary of the outputs (e.g. scores) that the run's events carry for every run of the
   * node, output node or not: shown on the node in the editor and in `--json` lines.
   */
  summary?(outputs: NodeOutputs): Record<string, unknown> | undefined;
  run(ctx: NodeContext<S>, inputs: NodeInputs): Promise<NodeOutputs>;
}

/** An error a node raises for bad input; the engine reports it with the node id and type. */
export class NodeInputError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
    this.name = 'NodeInputError';
  }
}
