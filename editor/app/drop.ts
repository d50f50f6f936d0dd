// Opening files dropped on the page (or picked with "Open file…"): a workflow .json, or a PNG that
// charflow saved (its tEXt chunk 'workflow' holds the workflow). Other images become a character.
import { isPng, readPngText } from './png.ts';

export type DroppedFile =
  | { kind: 'workflow'; workflow: unknown; name: string }
  | { kind: 'image'; file: File }
  | { kind: 'error'; message: string };

const IMAGE_TYPE = /^image\/(png|jpeg|webp|avif|tiff|gif)$/;

/** What a file holds, as far as the editor cares. */
export async function readDroppedFile(file: File): Promise<DroppedFile> {
  const base = file.name.replace(/\.(json|png)$/i, '');
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (isPng(bytes)) {
    const text = await readPngText(bytes).catch(() => ({}) as Record<string, string>);
    if (text.workflow) {
      try {
        return { kind: 'workflow', workflow: JSON.parse(text.workflow), name: base };
      } catch {
        return { kind: 'error', message: `${file.name}: its embedded workflow is not valid JSON` };
      }
    }
    return { kind: 'image', file };
  }
  if (/\.json$/i.test(file.name) || file.type === 'application/json') {
    try {
      return { kind: 'workflow', workflow: JSON.parse(new TextDecoder().decode(bytes)), name: base };
    } catch (err) {
      return { kind: 'error', message: `${file.name}: not valid JSON (${(err as Error).message})` };
    }
  }
  if (IMAGE_TYPE.test(file.type)) return { kind: 'image', file };
  return { kind: 'error', message: `${file.name}: not a workflow (.json) or an image` };
}

/** Calls `onFile` for files dropped anywhere on `target`, and shows a drop hint while dragging. */
export function installDropHandler(target: HTMLElement, onFile: (file: File, clientX: number, clientY: number) => void): void {
  let depth = 0;
  const hasFiles = (e: DragEvent): boolean => !!e.dataTransfer && Array.from(e.dataTransfer.types).includes('Files');
  target.addEventListener('dragenter', (e) => {
    if (!hasFiles(e)) return;
    depth++;
    document.body.classList.add('cf-dropping');
  });
  target.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (!depth) document.body.classList.remove('cf-dropping');
  });
  target.addEventListener('dragover', (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    e.dataTransfer!.dropEffect = 'copy';
  });
  target.addEventListener(
    'drop',
    (e) => {
      depth = 0;
      document.body.classList.remove('cf-dropping');
      const file = e.dataTransfer?.files?.[0];
      if (!file) return;
      e.preventDefault();
      e.stopPropagation();
      onFile(file, e.clientX, e.clientY);
    },
    true,
  );
}
