// The executor: planning, running, caching and events.
export * from './events.ts';
export { DEFAULT_CACHE_BUDGET, estimateSize, OutputCache, type CacheStats } from './cache.ts';
export { defaultTargets, IndexHeap, planRun, type PlanLink, type PlanNode, type RunPlan } from './scheduler.ts';
export {
  DEFAULT_CONCURRENCY,
  execute,
  Executor,
  type ExecutorOptions,
  type NodeOutcome,
  type RunOptions,
  type RunResult,
} from './executor.ts';
