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
 * 'image' (file picker with upload, the value is a path inside the inputs folder), 'color' (#rrggbb).
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
  format?: 'prompt' | 'seed' | 'image' | 'color';
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
