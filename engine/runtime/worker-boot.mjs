// Plain-JavaScript entry of runtime worker threads. On Node 20, loader hooks of the parent thread
// (tsx registered by bin/charflow.js, vitest's transformer) do not reach a worker, and
// `execArgv: ['--import', 'tsx']` does not apply to a worker's TypeScript entry either, so the
// worker registers tsx itself and then imports its TypeScript code.
import { register } from 'tsx/esm/api';

register();
await import('./worker.ts');
