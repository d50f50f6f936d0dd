// A whole program using the pool, run in a child process by lifecycle.test.ts. Prints one JSON
// line; the test then checks that the process exits by itself.
import { liveWorkers, SessionPool } from '../../engine/runtime/pool.ts';
import { f32 } from '../../models/tensor.ts';
import { affineModel } from './models.ts';

const [mode, dir] = process.argv.slice(2) as ['close' | 'idle', string];
const m = affineModel(dir, `child_${mode}`);
const pool = await SessionPool.create({ log: () => {} });
const out = await pool.run(m.path, { x: f32([2, 3], [1, 2, 3, -1, 0, 5]) });
// 'close' ends the workers; 'idle' leaves them: idle workers must not hold the process open either.
const before = liveWorkers();
if (mode === 'close') await pool.close();
console.log(JSON.stringify({ device: pool.device, y: Array.from(out.y!.data as Float32Array), stats: pool.stats(), workers: [before, liveWorkers()] }));
