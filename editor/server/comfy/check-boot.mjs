// Plain-JavaScript entry of the prompt-check thread: a worker thread does not inherit the parent's
// TypeScript loader on Node 20 (see engine/runtime/worker-boot.mjs), so it registers tsx itself.
import { register } from 'tsx/esm/api';

register();
await import('./check-worker.ts');
