// The charflow server: startServer (HTTP + editor WebSocket over the job queue) and the serve command.
export {
  DEFAULT_LIMITS,
  serverVersion,
  startServer,
  type RunningServer,
  type ServerContext,
  type ServerLimits,
  type ServerOptions,
  type ServerPlugin,
} from './server.ts';
export { Guard, isLoopbackHost, type GuardOptions, type Refusal } from './security.ts';
export { buildCatalog, catalogNode } from './catalog.ts';
export { checkWorkflowName, StoreError, WorkflowStore } from './workflows.ts';
export { FileRequestError, IMAGE_TYPES, resolveView, storeUpload, viewUrl, type ImageFolder, type UploadResult } from './files.ts';
export { parseClientMessage, toEventMessage } from './messages.ts';
