// What the server hands to the layers it mounts (the ComfyUI API, plugins): kept apart from
// server.ts so those layers need not import the server that imports them.
import type http from 'node:http';
import type { IncomingMessage } from 'node:http';
import type express from 'express';
import type { WebSocket } from 'ws';
import type { NodeDef } from '../../engine/node.ts';
import type { DataPaths } from '../../engine/paths.ts';
import type { JobDispatcher, JobQueue } from '../../engine/queue/index.ts';
import type { Services } from '../../nodes/services.ts';
import type { Guard } from './security.ts';

export interface ServerLimits {
  /** JSON request bodies (default 32 MiB). */
  jsonBodyBytes: number;
  /** Image uploads (default 50 MiB). */
  uploadBytes: number;
  /** One WebSocket frame (default 32 MiB; larger frames close the connection). */
  wsMessageBytes: number;
  /** Nodes per workflow (default 20,000). */
  maxNodes: number;
  /** Pending jobs per client (default 100). */
  maxPendingPerClient: number;
  /** Open WebSocket connections, all paths together (default 64). */
  maxConnections: number;
  /** Client WebSockets from one address (default 32): one client cannot hold every slot. */
  maxConnectionsPerClient?: number;
  /** Worker WebSockets (/ws/worker), counted apart from clients' so workers can always register (default 64). */
  maxWorkerConnections?: number;
  /** Finished jobs kept in the history (default 10,000). */
  keepHistory: number;
}

/** What a plugin (e.g. the ComfyUI-compatible API) gets to add routes and WebSocket paths. */
export interface ServerContext {
  app: express.Express;
  httpServer: http.Server;
  paths: DataPaths;
  registry: ReadonlyMap<string, NodeDef<Services>>;
  services: Services;
  queue: JobQueue;
  /** Runs the jobs: the embedded runner, or BullMQ workers (scale-out). */
  runner: JobDispatcher;
  guard: Guard;
  limits: ServerLimits;
  serverVersion: string;
  log: (message: string) => void;
  /**
   * Accepts WebSocket upgrades on `pathname` (query strings allowed), after the Host, token and
   * Origin checks and the connection limit.
   */
  websocket(pathname: string, onConnection: (ws: WebSocket, req: IncomingMessage) => void): void;
  /** Runs at close(), before the queue closes. */
  onClose(fn: () => void | Promise<void>): void;
}

export type ServerPlugin = (ctx: ServerContext) => void | Promise<void>;
