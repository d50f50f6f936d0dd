// ComfyUI's PNGs carry the API prompt in a tEXt chunk `prompt` beside `workflow`. SaveImage embeds
// the charflow workflow itself; for jobs queued through POST /prompt this adds `prompt` to the PNGs
// an output node wrote, right after the node finishes. The executor waits for its async listeners
// before a run ends, so the history (and any /view after it) only ever sees the finished file.
import { readFile } from 'node:fs/promises';
import type { Executor } from '../../../engine/executor/index.ts';
import type { DataPaths } from '../../../engine/paths.ts';
import { writeFileAtomic } from '../../../engine/fsutil.ts';
import { imagesOf } from '../../../engine/queue/runner.ts';
import { addPngText, readPngText } from '../../../nodes/lib/image.ts';
import { folderOf, realInside } from '../files.ts';

const PNG_SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

/** Adds tEXt `prompt` to a PNG file unless it has one; files that are not PNG are left alone. */
export async function addPromptToPng(file: string, promptJson: string): Promise<boolean> {
  const bytes = new Uint8Array(await readFile(file));
  if (bytes.length < 8 || PNG_SIGNATURE.some((b, i) => bytes[i] !== b)) return false;
  if ('prompt' in readPngText(bytes)) return false;
  await writeFileAtomic(file, addPngText(bytes, { prompt: promptJson }));
  return true;
}

export class PromptEmbedder<S> {
  /** Job id -> its API prompt as JSON, while the job runs. */
  private readonly prompts = new Map<string, string>();
  /** `${job}\0${node}` -> the write in progress, so `executed` can be sent after it. */
  private readonly writes = new Map<string, Promise<void>>();
  private readonly unsubscribe: () => void;

  constructor(
    private readonly paths: DataPaths,
    executor: Executor<S>,
    private readonly log: (message: string) => void,
  ) {
    this.unsubscribe = executor.events.on('node_finished', (e) => {
      const json = this.prompts.get(e.runId);
      const images = json === undefined ? undefined : imagesOf(e.outputs)?.filter((i) => /\.png$/i.test(i.filename));
      if (!json || !images?.length) return undefined;
      const write = this.embed(images, json);
      this.writes.set(`${e.runId}\0${e.nodeId}`, write);
      return write;
    });
  }

  private async embed(images: { filename: string; subfolder: string; type: 'output' | 'temp' | 'input' }[], json: string): Promise<void> {
    for (const img of images) {
      try {
        const rel = img.subfolder ? `${img.subfolder}/${img.filename}` : img.filename;
        await addPromptToPng(await realInside(folderOf(this.paths, img.type), rel), json);
      } catch (err) {
        this.log(`warning: could not add the prompt to ${img.filename}: ${(err as Error).message}`);
      }
    }
  }

  track(jobId: string, prompt: unknown): void {
    this.prompts.set(jobId, JSON.stringify(prompt));
  }

  untrack(jobId: string): void {
    this.prompts.delete(jobId);
    for (const key of this.writes.keys()) if (key.startsWith(`${jobId}\0`)) this.writes.delete(key);
  }

  /** Resolves when the PNGs of that node have their prompt (at once when there is nothing to wait for). */
  settled(jobId: string, nodeId: string): Promise<void> {
    return this.writes.get(`${jobId}\0${nodeId}`) ?? Promise.resolve();
  }

  close(): void {
    this.unsubscribe();
    this.prompts.clear();
    this.writes.clear();
  }
}
