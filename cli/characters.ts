// `charflow characters ...`: characters kept by name in <data>/characters (nodes/lib/saved_characters.ts).
// add encodes a picture once (SigLIP, DINOv2, the adapter's static part); list, remove, export and import
// handle the files. Exit codes: 0 done, 2 a bad name, picture, file or argument (nothing written), 1 the
// work failed (a model run, the disk).
import { copyFileSync, existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Option, type Command } from 'commander';
import type { NodeContext } from '../engine/node.ts';
import { openModelSet, type ModelSet } from '../models/modelset.ts';
import type { Services } from '../nodes/services.ts';
import { decodeImage, squareImage } from '../nodes/lib/image.ts';
import {
  CharacterError, characterPath, readCharacterHeader, charactersDir, checkCharacterName, encodeCharacter, importCharacter, listCharacters, loadCharacter, newCharacter,
  removeCharacter, writeCharacter,
} from '../nodes/lib/saved_characters.ts';
import { CliError, commandAction, ensureDataDirs, EXIT, pathsFor, withDataOption, type CliContext } from './context.ts';
import { ensureTinySet } from './models.ts';
import { DEVICES } from './run.ts';
import { toJsonLine } from './format.ts';
import { TINY_SET_NAME } from '../models/tiny.ts';

/** A refused name, file or character is an argument error (2); nothing was written. */
function asCliError(err: unknown): never {
  if (err instanceof CharacterError) throw new CliError(err.message, EXIT.invalid);
  throw err;
}

function openSet(modelsRoot: string, name: string, why: string): ModelSet {
  try {
    return openModelSet(modelsRoot, name);
  } catch (err) {
    throw new CliError(`${why}: ${(err as Error).message}`, EXIT.invalid);
  }
}

function sizeText(bytes: number): string {
  return bytes >= 1024 ** 2 ? `${(bytes / 1024 ** 2).toFixed(1)} MiB` : `${(bytes / 1024).toFixed(1)} KiB`;
}

interface Common { data?: string; models?: string }

export function registerCharacters(program: Command, ctx: CliContext): Command {
  const cmd = program.command('characters').description('characters kept by name: encode a picture once, reuse it in workflows (Saved Character), share it as a file');
  const models = (c: Command): Command => withDataOption(c.option('--models <dir>', 'models folder (default: $CHARFLOW_MODELS or <data>/models)'));

  models(cmd.command('add')
    .description('encode PICTURE with SigLIP, DINOv2 and the adapter of a model set and save it as NAME')
    .argument('<name>', 'name to keep it under (letters, digits, . _ -)')
    .argument('<picture>', 'PNG, JPEG, WebP, AVIF, TIFF or GIF (squared on white, as Load Character does)')
    .option('--set <set>', 'model set to encode with', TINY_SET_NAME)
    .option('--force', 'replace a character of the same name')
    .addOption(new Option('--device <device>', 'where models run').choices(DEVICES).default('auto')))
    .action(commandAction(ctx, async (name: string, picture: string, opts: Common & { set: string; force?: boolean; device: (typeof DEVICES)[number] }) => {
      const paths = pathsFor(ctx, opts);
      const dir = charactersDir(paths.root);
      let file: string;
      try {
        file = characterPath(dir, name);
      } catch (err) {
        asCliError(err);
      }
      if (existsSync(file) && !opts.force) throw new CliError(`a character named "${name}" exists already (${file}); choose another name or replace it with --force`);
      const picturePath = path.resolve(ctx.cwd, picture);
      let image;
      try {
        image = await squareImage(await decodeImage(readFileSync(picturePath)), 'pad');
      } catch (err) {
        throw new CliError(`picture ${picturePath}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
      }
      await ensureDataDirs(paths);
      if (opts.set === TINY_SET_NAME) await ensureTinySet(ctx, paths.models);
      const set = openSet(paths.models, opts.set, '--set');
      let services: Services & { close(): Promise<void> };
      try {
        services = (await ctx.createServices(paths, { device: opts.device })) as Services & { close(): Promise<void> };
      } catch (err) {
        throw new CliError(`cannot start: ${(err as Error).message}`, EXIT.nodeFailed);
      }
      const interrupt = ctx.interrupt();
      try {
        const nodeCtx: NodeContext<Services> = {
          nodeId: 'characters add', signal: interrupt.signal, progress: () => {}, services, workflow: {},
          log: { info: (m) => void ctx.stderr.write(`${m}\n`), warn: (m) => void ctx.stderr.write(`warning: ${m}\n`) },
        };
        ctx.stderr.write(`encoding ${picturePath} with model set "${set.name}" (SigLIP, DINOv2, adapter)\n`);
        let encoded;
        try {
          encoded = await encodeCharacter(nodeCtx, set, image);
        } catch (err) {
          if (interrupt.signal.aborted) return EXIT.cancelled;
          throw new CliError(`encoding failed: ${(err as Error).message}`, EXIT.nodeFailed);
        }
        try {
          writeCharacter(dir, newCharacter(name, set, encoded.tokens, encoded.reference, image), { force: opts.force });
        } catch (err) {
          asCliError(err);
        }
        ctx.stdout.write(`${file}\n`);
        return EXIT.ok;
      } finally {
        interrupt.dispose();
        await services.close();
      }
    }));

  withDataOption(cmd.command('list')
    .description('saved characters: name, model set, size, date')
    .option('--json', 'one JSON array: name, set, bytes, created, sha256'))
    .action(commandAction(ctx, async (opts: Common & { json?: boolean }) => {
      const list = listCharacters(charactersDir(pathsFor(ctx, opts).root), { hash: opts.json });
      if (opts.json) {
        ctx.stdout.write(`${toJsonLine(list.map((c) => ({ name: c.name, set: c.set, bytes: c.bytes, created: c.created, sha256: c.fileSha256 })))}\n`);
        return;
      }
      if (!list.length) {
        ctx.stderr.write('no saved characters (charflow characters add NAME PICTURE)\n');
        return;
      }
      const rows = [['NAME', 'SET', 'SIZE', 'CREATED'], ...list.map((c) => [c.name, c.set, sizeText(c.bytes), c.created.replace('T', ' ').replace(/\.\d+Z$/, 'Z')])];
      const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
      for (const r of rows) ctx.stdout.write(`${r.map((v, i) => (i === r.length - 1 ? v : v.padEnd(widths[i]!))).join('  ')}\n`);
    }));

  withDataOption(cmd.command('remove')
    .description('delete a saved character')
    .argument('<name>'))
    .action(commandAction(ctx, async (name: string, opts: Common) => {
      try {
        removeCharacter(charactersDir(pathsFor(ctx, opts).root), name);
      } catch (err) {
        asCliError(err);
      }
    }));

  withDataOption(cmd.command('export')
    .description('copy a saved character to FILE (one .safetensors file to share)')
    .argument('<name>')
    .argument('<file>')
    .option('--force', 'replace FILE if it exists'))
    .action(commandAction(ctx, async (name: string, file: string, opts: Common & { force?: boolean }) => {
      const dir = charactersDir(pathsFor(ctx, opts).root);
      const target = path.resolve(ctx.cwd, file);
      try {
        loadCharacter(dir, name); // only a character that reads and checks is shared
      } catch (err) {
        asCliError(err);
      }
      if (existsSync(target) && !opts.force) throw new CliError(`${target} exists already; use --force to replace it`);
      try {
        copyFileSync(characterPath(dir, name), target);
      } catch (err) {
        throw new CliError(`cannot write ${target}: ${(err as Error).message}`, EXIT.nodeFailed);
      }
      ctx.stdout.write(`${target}\n`);
    }));

  models(cmd.command('import')
    .description('add a shared character file, checked first: header, content hash, shapes and identity against the model set')
    .argument('<file>')
    .option('--set <set>', 'model set to check it against (default: the one named in the file)')
    .option('--name <name>', 'keep it under another name')
    .option('--force', 'replace a character of the same name'))
    .action(commandAction(ctx, async (file: string, opts: Common & { set?: string; name?: string; force?: boolean }) => {
      const paths = pathsFor(ctx, opts);
      const source = path.resolve(ctx.cwd, file);
      try {
        if (opts.name !== undefined) checkCharacterName(opts.name);
        // The file names its set; the whole file is read and checked against that set by importCharacter.
        const set = openSet(paths.models, opts.set ?? readCharacterHeader(source).set, `the model set to check ${source} against`);
        await ensureDataDirs(paths);
        const c = importCharacter(charactersDir(paths.root), source, set, { name: opts.name, force: opts.force });
        ctx.stdout.write(`${characterPath(charactersDir(paths.root), c.name)}\n`);
      } catch (err) {
        asCliError(err);
      }
    }));
  return cmd;
}

