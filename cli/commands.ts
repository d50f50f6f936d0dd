// Every CLI command, one registrar per file. To add a command: write cli/<name>.ts exporting
// `register<Name>(program, ctx)` (see run.ts) and add it to this list. Its action returns the exit
// code or throws a CliError (commandAction in context.ts); it never sets process.exitCode.
import type { CommandRegistrar } from './context.ts';
import { registerNodes } from './nodes.ts';
import { registerRun } from './run.ts';
import { registerValidate } from './validate.ts';
import { registerModels } from './models.ts';
import { registerDemo } from './demo.ts';
import { registerModels as registerConvert } from './checkpoints.ts';
import { registerServe } from './serve.ts';
import { registerWorker } from './worker.ts';
import { registerCharacters } from './characters.ts';

export const COMMANDS: CommandRegistrar[] = [registerRun, registerValidate, registerNodes, registerModels, registerConvert, registerDemo, registerServe, registerWorker, registerCharacters];
