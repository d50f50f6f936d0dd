// `charflow nodes [--json]`: the node types this charflow offers.
import type { Command } from 'commander';
import type { NodeDef } from '../engine/node.ts';
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
    }
  }
  return EXIT.ok;
}

export function registerNodes(program: Command, ctx: CliContext): void {
  withDataOption(
    program.command('nodes').description('list the node types').option('--json', 'print the full declarations as JSON'),
  ).action(commandAction(ctx, (opts: { json?: boolean }) => nodesCommand(ctx, opts)));
}
