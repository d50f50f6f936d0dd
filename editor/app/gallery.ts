// The gallery: any output picture full size (Save Image, Preview Image, a past run), arrow keys through a
// batch, download, the file name and identity scores (read from the PNG's `identity_scores` text), and the
// character's reference picture side by side when the run had one.
import { el } from './dialogs.ts';
import { readPngText } from './png.ts';
import { inputViewUrl } from './api.ts';

export interface GalleryImage {
  url: string;
  filename: string;
}

export interface GalleryOptions {
  /** URL of the reference picture (Load Character's), shown beside the output. */
  reference?: string;
  /** Index of the picture shown first. */
  start?: number;
}

/** "DINO-I 0.812 · SigLIP-I 0.774" from the PNG's identity_scores text; '' when it has none. */
export function scoresText(raw: string | undefined): string {
  if (!raw) return '';
  try {
    const s = JSON.parse(raw) as { dino_i?: unknown; siglip_i?: unknown };
    const parts: string[] = [];
    if (typeof s.dino_i === 'number') parts.push(`DINO-I ${s.dino_i.toFixed(3)}`);
    if (typeof s.siglip_i === 'number') parts.push(`SigLIP-I ${s.siglip_i.toFixed(3)}`);
    return parts.join(' · ');
  } catch {
    return '';
  }
}

async function identityOf(url: string): Promise<string> {
  try {
    const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
    return scoresText((await readPngText(bytes)).identity_scores);
  } catch {
    return '';
  }
}

/** Opens the viewer; resolves when it is closed. */
export function openGallery(images: readonly GalleryImage[], opts: GalleryOptions = {}): Promise<void> {
  if (!images.length) return Promise.resolve();
  let index = Math.min(Math.max(0, opts.start ?? 0), images.length - 1);
  return new Promise((resolve) => {
    const picture = el('img', { className: 'cf-gallery-img', alt: '' });
    const name = el('span', { className: 'cf-gallery-name' });
    const counter = el('span', { className: 'cf-gallery-count' });
    const scores = el('span', { className: 'cf-gallery-scores' });
    const download = el('a', { className: 'cf-btn cf-gallery-download', textContent: 'Download' });
    const prev = el('button', { className: 'cf-btn cf-gallery-prev', textContent: '‹', title: 'Previous (←)' });
    const next = el('button', { className: 'cf-btn cf-gallery-next', textContent: '›', title: 'Next (→)' });
    const close = el('button', { className: 'cf-btn cf-gallery-close', textContent: '✕', title: 'Close (Esc)' });
    const stage = el('div', { className: 'cf-gallery-stage' });
    if (opts.reference) {
      stage.append(el('figure', { className: 'cf-gallery-ref' }, el('img', { src: opts.reference, alt: 'reference' }), el('figcaption', { textContent: 'reference' })));
    }
    stage.append(el('figure', { className: 'cf-gallery-out' }, picture));
    const root = el('div', { className: 'cf-gallery', role: 'dialog' } as Partial<HTMLDivElement>,
      el('div', { className: 'cf-gallery-bar' }, prev, counter, next, name, scores, el('span', { className: 'cf-spacer' }), download, close),
      stage);
    const show = (i: number): void => {
      index = (i + images.length) % images.length;
      const img = images[index]!;
      picture.src = img.url;
      name.textContent = img.filename;
      counter.textContent = `${index + 1} / ${images.length}`;
      download.href = img.url;
      download.download = img.filename;
      prev.disabled = next.disabled = images.length < 2;
      scores.textContent = '';
      const shown = index;
      void identityOf(img.url).then((t) => {
        if (shown === index) scores.textContent = t;
      });
    };
    const key = (e: KeyboardEvent): void => {
      if (e.key === 'ArrowLeft') show(index - 1);
      else if (e.key === 'ArrowRight') show(index + 1);
      else if (e.key === 'Escape') done();
      else return;
      e.preventDefault();
      e.stopPropagation();
    };
    const done = (): void => {
      document.removeEventListener('keydown', key, true);
      root.remove();
      resolve();
    };
    prev.addEventListener('click', () => show(index - 1));
    next.addEventListener('click', () => show(index + 1));
    close.addEventListener('click', done);
    root.addEventListener('pointerdown', (e) => {
      if (e.target === root || e.target === stage) done();
    });
    document.addEventListener('keydown', key, true);
    document.body.append(root);
    show(index);
  });
}

/** The reference picture of a workflow: its first Load Character's `path`, as a view URL. */
export function referenceOf(workflow: unknown): string | undefined {
  const nodes = (workflow as { nodes?: Record<string, { type?: unknown; inputs?: Record<string, unknown> }> } | undefined)?.nodes ?? {};
  for (const n of Object.values(nodes)) {
    const path = n?.inputs?.path;
    if (n?.type === 'LoadCharacter' && typeof path === 'string' && path) return inputViewUrl(path);
  }
  return undefined;
}
