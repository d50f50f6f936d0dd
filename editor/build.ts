// Bundles the browser editor (editor/app, litegraph included; no CDN) into static files with esbuild.
// The server serves editorStaticDir(), which rebuilds on demand when the bundle is missing or older
// than its sources (CI runs only `npm ci && npm test`). `npm run build:editor` builds it by hand.
import { build, buildSync, type BuildOptions, type OutputFile } from 'esbuild';
import { copyFileSync, existsSync, mkdirSync, readdirSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const EDITOR = join(ROOT, 'editor');
const STAMP = '.build-stamp';

/** Files and folders whose changes make a rebuild necessary. */
function sources(): string[] {
  return [
    join(EDITOR, 'app'),
    join(EDITOR, 'index.html'),
    join(EDITOR, 'protocol.ts'),
    join(EDITOR, 'build.ts'),
    join(ROOT, 'engine', 'workflow', 'types.ts'),
    join(ROOT, 'engine', 'workflow', 'migrate.ts'),
    join(ROOT, 'workflows', 'instantcharacter.json'),
    join(ROOT, 'node_modules', '@comfyorg', 'litegraph', 'package.json'),
  ];
}

function newestMtime(path: string): number {
  if (!existsSync(path)) return 0;
  const st = statSync(path);
  if (!st.isDirectory()) return st.mtimeMs;
  let newest = st.mtimeMs;
  for (const entry of readdirSync(path)) newest = Math.max(newest, newestMtime(join(path, entry)));
  return newest;
}

/** The default output folder (git-ignored). */
export function defaultEditorOutDir(): string {
  return join(ROOT, 'dist', 'editor');
}

function options(outDir: string): BuildOptions & { write: false } {
  return {
    entryPoints: { app: join(EDITOR, 'app', 'main.ts') },
    outdir: outDir,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: ['es2022', 'chrome110', 'firefox115', 'safari16'],
    minify: true,
    sourcemap: 'linked',
    charset: 'utf8',
    legalComments: 'linked',
    logLevel: 'silent',
    write: false,
    absWorkingDir: ROOT,
  };
}

/** Writes each file next to its final name and renames it in place, so a server never serves half a file. */
function writeOutputs(outDir: string, files: OutputFile[]): void {
  mkdirSync(outDir, { recursive: true });
  const tmp = `.tmp-${process.pid}-${Date.now()}`;
  const put = (path: string, write: (p: string) => void): void => {
    mkdirSync(dirname(path), { recursive: true });
    write(path + tmp);
    renameSync(path + tmp, path);
  };
  for (const f of files) put(f.path, (p) => writeFileSync(p, f.contents));
  put(join(outDir, 'index.html'), (p) => copyFileSync(join(EDITOR, 'index.html'), p));
  put(join(outDir, STAMP), (p) => writeFileSync(p, `${new Date().toISOString()}\n`));
}

/** Bundles the editor into `outDir` (index.html, app.js, app.css, source maps); returns the folder. */
export async function buildEditor(outDir = defaultEditorOutDir()): Promise<string> {
  const result = await build(options(outDir));
  writeOutputs(outDir, result.outputFiles);
  return outDir;
}

/** The same, synchronously (for editorStaticDir). */
export function buildEditorSync(outDir = defaultEditorOutDir()): string {
  const result = buildSync(options(outDir));
  writeOutputs(outDir, result.outputFiles);
  return outDir;
}

/** Whether the bundle in `outDir` is missing or older than any source. */
export function editorIsStale(outDir = defaultEditorOutDir()): boolean {
  const stamp = join(outDir, STAMP);
  if (!existsSync(stamp) || !existsSync(join(outDir, 'app.js'))) return true;
  const built = statSync(stamp).mtimeMs;
  return sources().some((s) => newestMtime(s) > built);
}

/**
 * The folder of static files the server serves at its root (index.html, app.js, app.css), built
 * on demand. Falls back to a folder under the OS temp dir when the package folder is read-only.
 */
export function editorStaticDir(): string {
  const outDir = defaultEditorOutDir();
  if (!editorIsStale(outDir)) return outDir;
  try {
    return buildEditorSync(outDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EACCES' && (err as NodeJS.ErrnoException).code !== 'EROFS') throw err;
    const fallback = join(tmpdir(), 'charflow-editor');
    return editorIsStale(fallback) ? buildEditorSync(fallback) : fallback;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const out = process.argv[2] ?? defaultEditorOutDir();
  const t0 = Date.now();
  await buildEditor(out);
  console.log(`editor built into ${relative(process.cwd(), out) || '.'} in ${Date.now() - t0} ms`);
}
