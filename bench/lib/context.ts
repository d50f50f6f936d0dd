// What every benchmark section gets from bench/run.ts.
import type { NodeDef } from '../../engine/node.ts';
import type { DataPaths } from '../../engine/paths.ts';
import type { OwnedServices, Services } from '../../nodes/services.ts';

export interface BenchContext {
  /** Services with charflow's default runtime settings, on the bench's models folder. */
  services: OwnedServices;
  registry: ReadonlyMap<string, NodeDef<Services>>;
  paths: DataPaths;
  log(message: string): void;
  /** False once the bench is past its time budget: sections stop adding repetitions. */
  mayExtend(): boolean;
  /** Fewer repetitions (development runs). */
  quick: boolean;
  /** Raw measurements of each section, written to results.json. */
  details: Record<string, unknown>;
}

export const silentLogger = { info: () => {}, warn: () => {} };
