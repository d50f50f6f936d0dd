// What the pipeline nodes get from their host through ctx.services: folders and the model runtime.
// The engine passes this object through without looking inside.
import type { DataPaths } from '../engine/paths.ts';

export interface ServiceOptions {
  device?: 'auto' | 'cpu' | 'cuda' | 'webgpu';
}

export interface Services {
  paths: DataPaths;
}

export interface OwnedServices extends Services {
  close(): Promise<void>;
}

export async function createServices(paths: DataPaths, _opts: ServiceOptions = {}): Promise<OwnedServices> {
  return { paths, close: async () => {} };
}
