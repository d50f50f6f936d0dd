// The ComfyUI-compatible API: ComfyUI's HTTP routes (bare and under /api/) and its WebSocket (/ws),
// speaking for charflow's node types, over the server's one queue, history and runner. Stock
// ComfyUI clients can queue prompts, follow progress and fetch images. Same security as the rest
// of the server: the app's Host/token/Origin middleware guards the routes, and ctx.websocket the
// socket.
import type { NextFunction, Request, Response } from 'express';
import type { Services } from '../../../nodes/services.ts';
import type { ServerContext } from '../context.ts';
import { promptError } from './errors.ts';
import { comfyRouter } from './routes.ts';
import { ComfyHub } from './ws.ts';

export { apiToWorkflow, workflowToApi, isCharflowWorkflow, outputNames, type ApiNode, type ApiPrompt } from './convert.ts';
export { allObjectInfo, objectInfo, type ObjectInfo } from './object-info.ts';
export { errorBody, issuesFromValidation, type ComfyErrorBody, type ComfyError, type ComfyNodeErrors } from './errors.ts';
export { historyEntry, queueItem } from './history.ts';
export { previewFrame } from './ws.ts';

/** Mounts the ComfyUI API on a starting server (a ServerPlugin). */
export function mountComfyApi(ctx: ServerContext): void {
  const hub = new ComfyHub<Services>({ queue: ctx.queue, runner: ctx.runner, log: ctx.log });

  const router = comfyRouter(ctx, hub);
  ctx.app.use('/api', router);
  ctx.app.use(router);
  // A body that is not JSON, or too large, is refused in ComfyUI's shape on /prompt (errors skip
  // the routers above, so this sees the app parser's errors too).
  ctx.app.use(['/prompt', '/api/prompt'], (err: unknown, _req: Request, res: Response, next: NextFunction) => {
    const e = err as { type?: string };
    if (e?.type === 'entity.parse.failed') return void res.status(400).json(promptError('invalid_prompt', 'the request body is not valid JSON'));
    if (e?.type === 'entity.too.large') return void res.status(413).json(promptError('invalid_prompt', 'the request body is larger than the limit'));
    next(err);
  });
  for (const path of ['/ws', '/api/ws']) ctx.websocket(path, (ws, req) => hub.attach(ws, req));

  ctx.onClose(() => {
    hub.close();
  });
}
