// How `charflow run` shows a run: progress bars on a terminal, plain lines in logs, or one JSON
// event per line (--json). Each reporter is an event listener plus a logger for node messages.
import cliProgress from 'cli-progress';
import type { RunEvent } from '../engine/executor/events.ts';
import type { Logger } from '../engine/node.ts';
import { nodeLabel } from '../engine/workflow/types.ts';
import type { OutStream } from './context.ts';
import { formatMs, toJsonLine } from './format.ts';

export interface Reporter {
  onEvent(e: RunEvent): void;
  logger: Logger;
  /** Stops any live display (bars) so that further output starts on a clean line. */
  close(): void;
}

function summary(counts: Record<string, number>): string {
  const parts = Object.entries(counts)
    .filter(([, n]) => n > 0)
    .map(([k, n]) => `${n} ${k}`);
  return parts.length ? parts.join(', ') : 'nothing to do';
}

function endLine(e: RunEvent): string | undefined {
  if (e.type === 'run_finished') {
    return e.status === 'done'
      ? `finished in ${formatMs(e.ms)}: ${summary({ ...e.counts })}`
      : `failed after ${formatMs(e.ms)}: ${summary({ ...e.counts })}`;
  }
  if (e.type === 'run_cancelled') return `cancelled after ${formatMs(e.ms)}: ${summary({ ...e.counts })}`;
  return undefined;
}

/** One JSON object per line on `out`; node log messages go to `err`. */
export function jsonReporter(out: OutStream, err: OutStream): Reporter {
  return {
    onEvent(e) {
      let line: string;
      try {
        line = toJsonLine(e);
      } catch {
        line = toJsonLine({ ...e, outputs: undefined, preview: undefined });
      }
      out.write(`${line}\n`);
    },
    logger: { info: (m) => void err.write(`${m}\n`), warn: (m) => void err.write(`warning: ${m}\n`) },
    close() {},
  };
}

/** Plain lines (for logs and pipes): each node's outcome, progress in quarter steps. */
export function plainReporter(err: OutStream): Reporter {
  const quarter = new Map<string, number>();
  const write = (s: string): void => void err.write(`${s}\n`);
  return {
    onEvent(e) {
      switch (e.type) {
        case 'run_started':
          write(`running ${e.nodes.length} node${e.nodes.length === 1 ? '' : 's'}`);
          break;
        case 'node_started':
          write(`${nodeLabel(e.nodeId, e.nodeType)} started`);
          break;
        case 'node_progress': {
          const q = e.total > 0 ? Math.floor((4 * e.step) / e.total) : 0;
          if (q > (quarter.get(e.nodeId) ?? 0) && e.step < e.total) {
            quarter.set(e.nodeId, q);
            write(`${nodeLabel(e.nodeId, e.nodeType)} ${e.step}/${e.total}`);
          }
          break;
        }
        case 'node_cached':
          write(`${nodeLabel(e.nodeId, e.nodeType)} cached`);
          break;
        case 'node_finished':
          write(`${nodeLabel(e.nodeId, e.nodeType)} done in ${formatMs(e.ms)}`);
          break;
        case 'node_failed':
        case 'node_skipped':
          write(e.message);
          break;
        default: {
          const end = endLine(e);
          if (end) write(end);
        }
      }
    },
    logger: { info: (m) => write(m), warn: (m) => write(`warning: ${m}`) },
    close() {},
  };
}

/** Progress bars on a terminal: one for the run, one per running node. */
export function barReporter(err: OutStream): Reporter {
  const multibar = new cliProgress.MultiBar(
    {
      stream: err as NodeJS.WritableStream,
      format: ' {bar} {value}/{total} {label}',
      barsize: 24,
      hideCursor: true,
      clearOnComplete: false,
      autopadding: true,
      fps: 10,
    },
    cliProgress.Presets.shades_classic,
  );
  let total: cliProgress.SingleBar | undefined;
  const bars = new Map<string, cliProgress.SingleBar>();
  let finished = 0;
  let stopped = false;
  const log = (s: string): void => {
    if (stopped) err.write(`${s}\n`);
    else multibar.log(`${s}\n`);
  };
  const settle = (id: string, line: string): void => {
    const bar = bars.get(id);
    if (bar) {
      multibar.remove(bar);
      bars.delete(id);
    }
    total?.update(++finished);
    log(line);
  };
  const stop = (): void => {
    if (!stopped) {
      stopped = true;
      multibar.update(); // a render flushes pending log lines; stop() alone drops them
      multibar.stop();
    }
  };
  return {
    onEvent(e) {
      switch (e.type) {
        case 'run_started':
          total = multibar.create(e.nodes.length, 0, { label: 'nodes' });
          break;
        case 'node_started':
          bars.set(e.nodeId, multibar.create(1, 0, { label: nodeLabel(e.nodeId, e.nodeType) }));
          break;
        case 'node_progress': {
          const bar = bars.get(e.nodeId);
          if (bar) {
            bar.setTotal(Math.max(1, e.total));
            bar.update(e.step);
          }
          break;
        }
        case 'node_cached':
          settle(e.nodeId, `  ${nodeLabel(e.nodeId, e.nodeType)} cached`);
          break;
        case 'node_finished':
          settle(e.nodeId, `✓ ${nodeLabel(e.nodeId, e.nodeType)} ${formatMs(e.ms)}`);
          break;
        case 'node_failed':
          settle(e.nodeId, `✗ ${e.message}`);
          break;
        case 'node_skipped':
          settle(e.nodeId, `- ${e.message}`);
          break;
        default: {
          const end = endLine(e);
          if (end) {
            stop();
            err.write(`${end}\n`);
          }
        }
      }
    },
    logger: { info: (m) => log(m), warn: (m) => log(`warning: ${m}`) },
    close: stop,
  };
}
