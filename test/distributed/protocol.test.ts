// The pure parts of scale-out: Redis URLs, queue names, the worker message checks and the names
// outputs get on the server.
import { describe, expect, it } from 'vitest';
import { queueName, redact, redisOptions, RedisUnreachableError, timingFromEnv, DEFAULT_LOCK_DURATION_MS, DEFAULT_STALLED_INTERVAL_MS } from '../../engine/queue/bullmq.ts';
import { bullId } from '../../engine/queue/bullmq-dispatcher.ts';
import { outputParts } from '../../editor/server/worker-outputs.ts';
import { checkJobResult, parseServerMessage, parseWorkerMessage } from '../../engine/queue/wire.ts';
import { jobIdOf } from '../../engine/queue/bullmq.ts';
import { scrubPaths } from '../../engine/queue/bullmq-dispatcher.ts';

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

  it('accepts only well-formed worker messages (one ajv schema per message)', () => {
    const ok = (m: unknown): unknown => {
      const r = parseWorkerMessage(JSON.stringify(m));
      return r.ok ? r.msg : r.reason;
    };
    expect(ok({ type: 'hello', name: 'gpu-1', device: 'cuda', sets: ['tiny'], loaded: [] })).toMatchObject({ type: 'hello' });
    expect(ok({ type: 'started', jobId: 'abc', lock: 'w:1' })).toEqual({ type: 'started', jobId: 'abc', lock: 'w:1' });
    expect(ok({ type: 'started', jobId: 'abc' })).toBe('invalid "started": the message lacks "lock"');
    expect(ok({ type: 'event', jobId: 'a', lock: 'l', event: { type: 'node_started', runId: 'b', time: 1, nodeId: '1', nodeType: 'X' } })).toBe('invalid "event": the event names another job');
    expect(ok({ type: 'hello', name: '../x', device: 'cpu', sets: [], loaded: [] })).toMatch(/^invalid "hello": "name" must match pattern/);
    // The frames that ended the server: a set name outside the charset, a preview whose base64 is a number.
    expect(ok({ type: 'hello', name: 'w', device: 'cpu', sets: ['../../bad set'], loaded: [] })).toMatch(/^invalid "hello": "sets.0" must match pattern/);
    expect(ok({ type: 'hello', name: 'w', device: 'cpu', sets: Array.from({ length: 100 }, (_, i) => `s${i}`), loaded: [] })).toBe('invalid "hello": "sets" must NOT have more than 16 items');
    expect(ok({ type: 'event', jobId: 'a', lock: 'l', event: { type: 'node_progress', runId: 'a', time: 1, nodeId: '1', nodeType: 'X', step: 1, total: 2, preview: { format: 'png', base64: 5 } } })).toBe(
      'invalid "event": event "preview.base64" must be string',
    );
    expect(ok({ type: 'started', jobId: 'a b', lock: 'l' })).toMatch(/"jobId" must match pattern/);
    expect(ok({ type: 'status', loaded: [], current: null, extra: 1 })).toBe('invalid "status": the message has an unknown field "extra"');
    expect(parseWorkerMessage('{')).toEqual({ ok: false, reason: 'not valid JSON' });
    expect(ok({ type: 'shell', cmd: 'rm' })).toBe('unknown message type "shell"');
    expect(ok({ type: 'toString' })).toBe('unknown message type "toString"');
    expect(parseServerMessage(JSON.stringify({ type: 'cancel', jobId: 'x' }))).toEqual({ ok: true, msg: { type: 'cancel', jobId: 'x' } });
    expect(parseServerMessage(JSON.stringify({ type: 'free', unloadModels: 'yes', clearCache: true })).ok).toBe(false);
  });

  it('checks stored results and job ids', () => {
    const good = { status: 'done', error: null, outputs: { '9': { images: [{ filename: 'x_p-1_9_0.png', subfolder: '', type: 'output' }] } }, nodes: { '9': { status: 'done', ms: 3 } }, worker: 'w1' };
    expect(checkJobResult(good).ok).toBe(true);
    expect(checkJobResult({ ...good, status: 'running' })).toEqual({ ok: false, reason: 'the job\'s stored result is not valid: "status" must be equal to one of the allowed values' });
    expect(checkJobResult('done').ok).toBe(false);
    expect(jobIdOf(bullId('a:b'))).toBe('a:b');
    expect(jobIdOf('forged')).toBeUndefined();
  });

  it('keeps worker paths out of messages', () => {
    expect(scrubPaths('node 3 (LoadCharacter) field image: cannot read /tmp/charflow-worker-x/inputs/by-hash/ab.png: ENOENT')).toBe(
      'node 3 (LoadCharacter) field image: cannot read ab.png: ENOENT',
    );
    expect(scrubPaths("open 'C:\\work\\models\\tiny\\flux.onnx' failed")).toBe("open 'flux.onnx' failed");
    expect(scrubPaths('see http://host:8188/api/view and 3/4 steps')).toBe('see http://host:8188/api/view and 3/4 steps');
  });

  it("takes an uploaded output's prefix and extension only, inside the folder", () => {
    expect(outputParts('hero_00007.png')).toEqual({ stem: 'hero', ext: '.png' });
    expect(outputParts('../../etc/x_00001.PNG')).toEqual({ stem: 'x', ext: '.png' });
    expect(() => outputParts('x.sh')).toThrow(/outputs must be/);
  });
});
