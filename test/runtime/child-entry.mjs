// Starts child-main.ts the way bin/charflow.js starts the CLI: plain node, tsx registered through
// its API. Used by lifecycle.test.ts to check the runtime outside vitest.
import { register } from 'tsx/esm/api';

register();
await import('./child-main.ts');
