// A small typed event emitter. A listener that throws is reported and never breaks the emitter's
// caller: the queue must not lose a commit because a WebSocket handler failed.

export type EventMap = { [name: string]: unknown[] };
export type Listener<A extends unknown[]> = (...args: A) => void;

export class Emitter<E extends EventMap> {
  private readonly listeners = new Map<keyof E, Set<(...args: never[]) => void>>();

  constructor(private readonly onListenerError: (err: unknown) => void = (err) => console.error('charflow: event listener failed:', err)) {}

  /** Subscribes; returns a function that unsubscribes. */
  on<K extends keyof E>(name: K, listener: Listener<E[K]>): () => void {
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    set.add(listener as unknown as (...args: never[]) => void);
    return () => this.off(name, listener);
  }

  off<K extends keyof E>(name: K, listener: Listener<E[K]>): void {
    this.listeners.get(name)?.delete(listener as unknown as (...args: never[]) => void);
  }

  protected emit<K extends keyof E>(name: K, ...args: E[K]): void {
    const set = this.listeners.get(name);
    if (!set) return;
    for (const l of [...set]) {
      try {
        (l as unknown as Listener<E[K]>)(...args);
      } catch (err) {
        this.onListenerError(err);
      }
    }
  }
}
