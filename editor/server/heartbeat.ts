// WebSocket liveness shared by the editor and ComfyUI sockets: a client that did not answer the
// previous ping is dropped, the others are pinged again.
import type { WebSocket } from 'ws';

export interface LiveClient {
  ws: WebSocket;
  alive: boolean;
}

/** Marks a client alive whenever it answers a ping. */
export function trackPongs(client: LiveClient): void {
  client.ws.on('pong', () => (client.alive = true));
}

export function pingClients<C extends LiveClient>(clients: Set<C>): void {
  for (const c of clients) {
    if (!c.alive) {
      c.ws.terminate();
      clients.delete(c);
      continue;
    }
    c.alive = false;
    c.ws.ping();
  }
}
