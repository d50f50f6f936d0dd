// `charflow nodes [--json]`: the node types this charflow offers.
import type { Command } from 'commander';
import type { NodeDef, ParamSchema } from '../engine/node.ts';
import { commandAction, EXIT, withDataOption, type CliContext } from './context.ts';

/** A node declaration without its functions, as JSON (for editors and scripts). */
export function describeNodeType(def: NodeDef<unknown>): Record<string, unknown> {
  return {
    type: def.type,
    ...(def.displayName !== undefined ? { displayName: def.displayName } : {}),
    category: def.category,
    description: def.description,
    version: def.version,
    output: def.output === true,
    cacheable: def.cacheable !== false,
    inputs: def.inputs,
    params: def.params,
    outputs: def.outputs,
  };
}

/** One parameter in a few words: type, default, range or choices. */
function describeParam(name: string, p: ParamSchema): string {
  const parts: string[] = [p.enum ? p.enum.join('|') : p.format === 'image' ? 'image' : p.type];
  if (p.minimum !== undefined || p.maximum !== undefined) parts.push(`${p.minimum ?? ''}..${p.maximum ?? ''}`);
  if (p.default !== undefined) parts.push(`= ${JSON.stringify(p.default)}`);
  else if (p.optional) parts.push('optional');
  return `${name} (${parts.join(' ')})`;
}

/** The three lines under a node type in `charflow nodes`: its sockets in, its constants, its sockets out. */
export function nodeSignature(def: NodeDef<unknown>): string[] {
  const list = (items: string[]): string => (items.length ? items.join(', ') : '-');
  return [
    `inputs:  ${list(Object.entries(def.inputs).map(([n, i]) => `${n} (${i.type}${i.optional ? ', optional' : ''})`))}`,
    `params:  ${list(Object.entries(def.params).map(([n, p]) => describeParam(n, p)))}`,
    `outputs: ${list(Object.entries(def.outputs).map(([n, o]) => `${n} (${o.type})`))}`,
  ];
}

export async function nodesCommand(ctx: CliContext, opts: { json?: boolean }): Promise<number> {
  const defs = [...(await ctx.registry()).values()];
  if (opts.json) {
    ctx.stdout.write(`${JSON.stringify(defs.map(describeNodeType), null, 2)}\n`);
    return EXIT.ok;
  }
  if (defs.length === 0) {
    ctx.stdout.write('no node types registered\n');
    return EXIT.ok;
  }
  const byCategory = new Map<string, NodeDef<unknown>[]>();
  for (const d of defs) byCategory.set(d.category, [...(byCategory.get(d.category) ?? []), d]);
  const width = Math.max(...defs.map((d) => d.type.length));
  for (const [category, list] of byCategory) {
    ctx.stdout.write(`${category}\n`);
    for (const d of list) {
      const flags = d.output ? ' [output]' : '';
      ctx.stdout.write(`  ${d.type.padEnd(width)}  ${d.description}${flags}\n`);
      for (const line of nodeSignature(d)) ctx.stdout.write(`      ${line}\n`);
    }
  }
  return EXIT.ok;
}

export function registerNodes(program: Command, ctx: CliContext): void {
  withDataOption(
    program.command('nodes').description('list the node types').option('--json', 'print the full declarations as JSON'),
  ).action(commandAction(ctx, (opts: { json?: boolean }) => nodesCommand(ctx, opts)));
}
