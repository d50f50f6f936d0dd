// The pure parts of scale-out: Redis URLs, queue names, the worker message checks and the names
// outputs get on the server.
import { describe, expect, it } from 'vitest';
import { queueName, redact, redisOptions, RedisUnreachableError, timingFromEnv, DEFAULT_LOCK_DURATION_MS, DEFAULT_STALLED_INTERVAL_MS } from '../../engine/queue/bullmq.ts';
import { bullId } from '../../engine/queue/bullmq-dispatcher.ts';
import { outputName, parseWorkerMessage } from '../../editor/server/workers.ts';

describe('scale-out protocol', () => {
  it('reads redis:// and rediss:// URLs and refuses others', () => {
    expect(redisOptions('redis://127.0.0.1:6390')).toEqual({ host: '127.0.0.1', port: 6390 });
    expect(redisOptions('rediss://u%40x:p%3Aw@cache.example:6380/3')).toEqual({ host: 'cache.example', port: 6380, username: 'u@x', password: 'p:w', db: 3, tls: {} });
    expect(redisOptions('redis://[::1]')).toEqual({ host: '::1', port: 6379 });
    expect(() => redisOptions('http://x:1')).toThrow(RedisUnreachableError);
    expect(() => redisOptions('redis://x:1/abc')).toThrow(/database must be a number/);
    expect(() => redisOptions('not a url')).toThrow(/is not a URL/);
    expect(redact('redis://u:secret@h:1/0')).not.toContain('secret');
  });

  it('names one queue per model set and keeps BullMQ ids free of ":"', () => {
    expect(queueName('tiny')).toBe('charflow.tiny');
    expect(() => queueName('../x')).toThrow(/not a valid model set name/);
    expect(bullId('a:b:c')).toBe('j.a~b~c');
    expect(bullId('42')).toBe('j.42');
  });

  it('takes lock timing from the environment, checked', () => {
    expect(timingFromEnv({})).toEqual({ lockDurationMs: DEFAULT_LOCK_DURATION_MS, stalledIntervalMs: DEFAULT_STALLED_INTERVAL_MS });
    expect(timingFromEnv({ CHARFLOW_LOCK_DURATION_MS: '2000', CHARFLOW_STALLED_INTERVAL_MS: '1000' })).toEqual({ lockDurationMs: 2000, stalledIntervalMs: 1000 });
    expect(() => timingFromEnv({ CHARFLOW_LOCK_DURATION_MS: '5s' })).toThrow(/CHARFLOW_LOCK_DURATION_MS/);
  });

  it('accepts only well-formed worker messages', () => {
    expect(parseWorkerMessage(JSON.stringify({ type: 'hello', name: 'gpu-1', device: 'cuda', sets: ['tiny'], loaded: [] }))).toMatchObject({ type: 'hello' });
    expect(parseWorkerMessage(JSON.stringify({ type: 'started', jobId: 'abc' }))).toEqual({ type: 'started', jobId: 'abc' });
    expect(parseWorkerMessage(JSON.stringify({ type: 'event', jobId: 'a', event: { type: 'node_started', runId: 'b' } }))).toBeUndefined();
    expect(parseWorkerMessage(JSON.stringify({ type: 'hello', name: '../x', device: 'cpu', sets: [], loaded: [] }))).toBeUndefined();
    expect(parseWorkerMessage(JSON.stringify({ type: 'started', jobId: 'a b' }))).toBeUndefined();
    expect(parseWorkerMessage('{')).toBeUndefined();
    expect(parseWorkerMessage(JSON.stringify({ type: 'shell', cmd: 'rm' }))).toBeUndefined();
  });

  it('names uploaded outputs by prompt, node and index, inside the folder', () => {
    expect(outputName('hero_00007.png', 'p-1', '9', 0)).toBe('hero_p-1_9_0.png');
    expect(outputName('../../etc/x_00001.png', 'a:b', '9', 2)).toBe('x_a-b_9_2.png');
    expect(() => outputName('x.sh', 'a', '1', 0)).toThrow(/outputs must be/);
  });
});
