// What a browser gets when it opens a protected server without the token: a small page that asks for it
// (and reloads with ?token=, which sets the cookie), instead of raw JSON. API clients keep the JSON.
import type { Request, Response } from 'express';

/** A page navigation (GET, wants HTML, not an /api or ComfyUI route a script would call). */
export function wantsTokenPage(req: Request): boolean {
  if (req.method !== 'GET') return false;
  if (req.path.startsWith('/api/') || req.path.startsWith('/ws')) return false;
  return (req.headers.accept ?? '').includes('text/html');
}

/** `message`: the refusal's (only "wrong token" changes the page). */
export function sendTokenPage(res: Response, message: string): void {
  res.status(401).type('html').send(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>charflow: token needed</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { margin: 0; min-height: 100vh; display: grid; place-items: center; background: #161616; color: #e6e6e6;
         font: 14px Inter, "Segoe UI", system-ui, sans-serif; }
  form { background: #1f1f1f; border: 1px solid #333; border-radius: 10px; padding: 24px 28px; width: min(420px, 90vw); }
  h1 { font-size: 18px; margin: 0 0 8px; } p { color: #8d8d8d; margin: 0 0 16px; }
  input { width: 100%; box-sizing: border-box; padding: 8px 10px; background: #111; color: inherit; border: 1px solid #444; border-radius: 6px; }
  button { margin-top: 12px; padding: 8px 14px; background: #2d6a3e; color: #fff; border: 0; border-radius: 6px; cursor: pointer; }
</style></head>
<body><form method="get" action="">
  <h1>charflow needs its token</h1>
  <p>${message === 'wrong token' ? 'That token was wrong. ' : ''}This server is protected. Enter the token it was started with
  (<code>--token</code> or <code>CHARFLOW_TOKEN</code>); the browser keeps it for this server.</p>
  <input name="token" type="password" autocomplete="current-password" placeholder="token" autofocus required>
  <button type="submit">Open the editor</button>
</form></body></html>
`);
}
