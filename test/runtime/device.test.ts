// Device choice: auto takes the first provider whose trial session really runs; an explicit device
// that cannot run is an error, never a silent fallback. Probes happen once per process.
import { describe, expect, it } from 'vitest';
import { deviceTrials } from '../../engine/runtime/device.ts';
import { DeviceUnavailableError, SessionPool } from '../../engine/runtime/pool.ts';

describe('device probing', () => {
  it('auto picks a device that runs, logs it, and probes once per process', async () => {
    const logs: string[] = [];
    const pool = await SessionPool.create({ device: 'auto', log: (m) => logs.push(m) });
    expect(['cpu', 'cuda', 'webgpu']).toContain(pool.device);
    expect(logs.some((l) => l.startsWith(`runtime device: ${pool.device}, chosen by auto`))).toBe(true);
    console.log(logs.join('\n'));
    const trials = deviceTrials();
    const again = await SessionPool.create({ device: 'auto', log: () => {} });
    expect(again.device).toBe(pool.device);
    expect(deviceTrials()).toBe(trials);
    await Promise.all([pool.close(), again.close()]);
  });

  it('explicit CUDA or WebGPU that cannot run gives a clear error (where auto found only the CPU)', async () => {
    const auto = await SessionPool.create({ log: () => {} });
    await auto.close();
    if (auto.device !== 'cpu') return; // a GPU machine: nothing to refuse
    const cuda = SessionPool.create({ device: 'cuda', log: () => {} });
    await expect(cuda).rejects.toBeInstanceOf(DeviceUnavailableError);
    await expect(cuda).rejects.toThrow(/^CUDA was requested but .*scripts\/install-cuda\.sh/);
    const webgpu = SessionPool.create({ device: 'webgpu', log: () => {} });
    await expect(webgpu).rejects.toThrow(/^WebGPU was requested but a trial session on the WebGPU provider failed/);
    const cpu = await SessionPool.create({ device: 'cpu', log: () => {} });
    expect(cpu.device).toBe('cpu');
    await cpu.close();
  });
});
