// The prompt-check thread: checks large prompts against the stock node registry and sends back
// either "ok" (the request handler then accepts it) or the refusal already serialised, so a huge
// error body is built and stringified off the server's event loop.
import { parentPort } from 'node:worker_threads';
import { nodeRegistry } from '../../../nodes/registry.ts';
import { checkPrompt } from './check.ts';

const registry = nodeRegistry();
parentPort!.on('message', (m: { id: number; prompt: unknown; maxNodes: number }) => {
  let reply: { id: number; ok: true } | { id: number; ok: false; status: number; json: string } | { id: number; error: string };
  try {
    const r = checkPrompt(m.prompt, registry, m.maxNodes);
    reply = 'status' in r ? { id: m.id, ok: false, status: r.status, json: JSON.stringify(r.body) } : { id: m.id, ok: true };
  } catch (err) {
    reply = { id: m.id, error: (err as Error).message };
  }
  parentPort!.postMessage(reply);
});
