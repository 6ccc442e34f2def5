/**
 * A small Prometheus registry: counters, gauges and histograms with fixed
 * buckets, rendered in the text exposition format (version 0.0.4) that
 * Prometheus, VictoriaMetrics and the OpenTelemetry collector scrape.
 *
 * Why not `prom-client`: Haven needs a few dozen series and the format is
 * small and stable; a registry of ~300 lines, tested against the grammar,
 * costs less than a dependency (and its transitive ones) in a daemon that
 * runs as root. It also lets the hot path be exactly what we want: a child
 * resolved once, then `inc()` is one addition — no label lookup, no string.
 *
 * ```ts
 * const registry = new Registry();
 * const beats = registry.counter('haven_beats_total', 'Heartbeats received.', ['transport']);
 * const byDatagram = beats.labels('datagram'); // resolve once…
 * byDatagram.inc();                            // …then a beat costs an addition
 * const text = await registry.render();        // what GET /metrics answers
 * ```
 *
 * Values computed at scrape time (hosts by state, an epoch's age) are set by
 * a `collect` callback, run before each render, instead of being kept up to
 * date on every change.
 */
import type { ServerResponse } from 'node:http';

/** The content type of the text exposition format. */
export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** Buckets (seconds) for durations from a millisecond to a minute. */
export const DURATION_BUCKETS: readonly number[] = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
];

/** Run before each render to bring values computed at scrape time up to date. */
export type Collect = () => void | Promise<void>;

/** Escapes a label value: backslash, double quote and line feed (the format's three escapes). */
export function escapeLabelValue(value: string): string {
  return value.replace(/[\\"\n]/g, (c) => (c === '\\' ? '\\\\' : c === '"' ? '\\"' : '\\n'));
}

/** Escapes HELP text: backslash and line feed only (quotes stay as they are). */
export function escapeHelp(text: string): string {
  return text.replace(/[\\\n]/g, (c) => (c === '\\' ? '\\\\' : '\\n'));
}

/** A sample value as the format spells it (`+Inf`, `-Inf`, `NaN`, else Go-parsable decimal). */
export function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value);
}

/** The `{a="x",b="y"}` part of a sample line (empty without labels). */
function labelText(names: readonly string[], values: readonly string[], extra = ''): string {
  const pairs = names.map((n, i) => `${n}="${escapeLabelValue(values[i] ?? '')}"`);
  if (extra) pairs.push(extra);
  return pairs.length === 0 ? '' : `{${pairs.join(',')}}`;
}

/** What every metric family shares: name, help, label names, children by label values. */
abstract class Family<Child> {
  abstract readonly type: 'counter' | 'gauge' | 'histogram';
  /** Children by their label values joined with NUL (which a label value cannot usefully hold). */
  protected readonly children = new Map<string, { values: readonly string[]; child: Child }>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
  ) {
    if (!METRIC_NAME.test(name)) throw new Error(`invalid metric name "${name}"`);
    for (const label of labelNames) {
      if (!LABEL_NAME.test(label) || label.startsWith('__'))
        throw new Error(`invalid label name "${label}" on ${name}`);
    }
    if (new Set(labelNames).size !== labelNames.length) throw new Error(`repeated label name on ${name}`);
  }

  protected abstract make(): Child;

  /**
   * The child for these label values, made on first use. Resolve it once and
   * keep it where the metric changes often: this lookup builds a string.
   */
  labels(...values: string[]): Child {
    if (values.length !== this.labelNames.length)
      throw new Error(`${this.name} takes ${this.labelNames.length} label value(s), got ${values.length}`);
    const key = values.join('\0');
    let entry = this.children.get(key);
    if (!entry) {
      entry = { values: [...values], child: this.make() };
      this.children.set(key, entry);
    }
    return entry.child;
  }

  /** Forgets every child (for a collect callback whose label sets come and go, e.g. per host). */
  reset(): void {
    this.children.clear();
  }

  /** Appends this family's `# HELP`, `# TYPE` and sample lines. */
  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`);
    for (const { values, child } of this.children.values()) this.renderChild(out, values, child);
  }

  protected abstract renderChild(out: string[], values: readonly string[], child: Child): void;
}

/** One counter series: only goes up (or restarts from zero with the process). */
export class CounterChild {
  value = 0;
  /** Adds `n` (default 1); a negative `n` is a bug and throws. */
  inc(n = 1): void {
    if (n < 0) throw new Error('a counter cannot go down');
    this.value += n;
  }
  /** Sets the total: for a counter that mirrors a monotonic count kept elsewhere, from a collect callback. */
  set(total: number): void {
    this.value = total;
  }
}

/** A counter family. Name it `…_total`. */
export class Counter extends Family<CounterChild> {
  readonly type = 'counter';
  protected make(): CounterChild {
    return new CounterChild();
  }
  /** Adds `n` to the unlabelled series. */
  inc(n = 1): void {
    this.labels().inc(n);
  }
  protected renderChild(out: string[], values: readonly string[], child: CounterChild): void {
    out.push(`${this.name}${labelText(this.labelNames, values)} ${formatValue(child.value)}`);
  }
}

/** One gauge series: a value that goes up and down. */
export class GaugeChild {
  value = 0;
  set(value: number): void {
    this.value = value;
  }
  inc(n = 1): void {
    this.value += n;
  }
  dec(n = 1): void {
    this.value -= n;
  }
}

/** A gauge family. */
export class Gauge extends Family<GaugeChild> {
  readonly type = 'gauge';
  protected make(): GaugeChild {
    return new GaugeChild();
  }
  /** Sets the unlabelled series. */
  set(value: number): void {
    this.labels().set(value);
  }
  protected renderChild(out: string[], values: readonly string[], child: GaugeChild): void {
    out.push(`${this.name}${labelText(this.labelNames, values)} ${formatValue(child.value)}`);
  }
}

/** One histogram series: observation counts per bucket (not cumulative until rendered), sum and count. */
export class HistogramChild {
  /** Observations that fell in bucket i (upper bound inclusive), the last slot for above every bound. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  constructor(private readonly bounds: readonly number[]) {
    this.counts = new Float64Array(bounds.length + 1);
  }
  /** Records one observation: a scan of the (few) bounds, no allocation. */
  observe(value: number): void {
    let i = 0;
    while (i < this.bounds.length && value > this.bounds[i]!) i++;
    this.counts[i]!++;
    this.sum += value;
    this.count++;
  }
}

/** A histogram family with fixed buckets (upper bounds, ascending; `+Inf` is implied). */
export class Histogram extends Family<HistogramChild> {
  readonly type = 'histogram';
  readonly buckets: readonly number[];
  constructor(name: string, help: string, labelNames: readonly string[], buckets: readonly number[]) {
    super(name, help, labelNames);
    if (labelNames.includes('le')) throw new Error(`${name}: "le" is reserved for buckets`);
    const finite = buckets.filter((b) => b !== Infinity);
    for (let i = 0; i < finite.length; i++) {
      if (!Number.isFinite(finite[i]) || (i > 0 && finite[i]! <= finite[i - 1]!))
        throw new Error(`${name}: buckets must be finite and strictly ascending`);
    }
    this.buckets = finite;
  }
  protected make(): HistogramChild {
    return new HistogramChild(this.buckets);
  }
  /** Records one observation in the unlabelled series. */
  observe(value: number): void {
    this.labels().observe(value);
  }
  protected renderChild(out: string[], values: readonly string[], child: HistogramChild): void {
    let cumulative = 0;
    const bounds = [...this.buckets.map(formatValue), '+Inf'];
    bounds.forEach((le, i) => {
      cumulative += child.counts[i]!;
      out.push(`${this.name}_bucket${labelText(this.labelNames, values, `le="${le}"`)} ${cumulative}`);
    });
    const labels = labelText(this.labelNames, values);
    out.push(
      `${this.name}_sum${labels} ${formatValue(child.sum)}`,
      `${this.name}_count${labels} ${child.count}`,
    );
  }
}

/** A set of metric families rendered together (one per process role: the controller's, an agent's). */
export class Registry {
  private readonly families = new Map<string, Family<unknown>>();
  private readonly collectors: Collect[] = [];

  private add<F extends Family<unknown>>(family: F): F {
    if (this.families.has(family.name)) throw new Error(`metric ${family.name} registered twice`);
    this.families.set(family.name, family);
    return family;
  }

  /** A counter family (`labelNames` empty: one series, use `inc()` on it). */
  counter(name: string, help: string, labelNames: readonly string[] = []): Counter {
    return this.add(new Counter(name, help, labelNames));
  }

  /** A gauge family. */
  gauge(name: string, help: string, labelNames: readonly string[] = []): Gauge {
    return this.add(new Gauge(name, help, labelNames));
  }

  /** A histogram family with fixed `buckets` (default {@link DURATION_BUCKETS}, seconds). */
  histogram(
    name: string,
    help: string,
    labelNames: readonly string[] = [],
    buckets: readonly number[] = DURATION_BUCKETS,
  ): Histogram {
    return this.add(new Histogram(name, help, labelNames, buckets));
  }

  /**
   * Runs `collect` before each render (values computed at scrape time).
   * Returns a function that unregisters it.
   */
  onCollect(collect: Collect): () => void {
    this.collectors.push(collect);
    return () => {
      const at = this.collectors.indexOf(collect);
      if (at >= 0) this.collectors.splice(at, 1);
    };
  }

  /**
   * The exposition text. A collector that fails leaves its values as they
   * were: a scrape must not fail because one source (say, the store) did.
   */
  async render(): Promise<string> {
    await Promise.all(
      this.collectors.map((c) =>
        Promise.resolve()
          .then(c)
          .catch(() => undefined),
      ),
    );
    const out: string[] = [];
    for (const family of this.families.values()) family.render(out);
    return `${out.join('\n')}\n`;
  }
}

/**
 * Adds the standard process series (`process_cpu_seconds_total`,
 * `process_resident_memory_bytes`, `process_start_time_seconds`) and Node's
 * heap and event-loop use, as every Prometheus client library does.
 */
export function registerProcessMetrics(registry: Registry): void {
  const cpu = registry.counter('process_cpu_seconds_total', 'User and system CPU time spent, in seconds.');
  const rss = registry.gauge('process_resident_memory_bytes', 'Resident memory size, in bytes.');
  const start = registry.gauge(
    'process_start_time_seconds',
    'Start time of the process since the Unix epoch, in seconds.',
  );
  const heap = registry.gauge('nodejs_heap_used_bytes', 'V8 heap in use, in bytes.');
  const loop = registry.gauge(
    'nodejs_eventloop_utilization',
    'Share of time the event loop was busy since the previous scrape (0 to 1).',
  );
  start.set(Math.round(Date.now() / 1000 - process.uptime()));
  let lastLoop = performance.eventLoopUtilization();
  registry.onCollect(() => {
    const usage = process.cpuUsage();
    cpu.labels().set((usage.user + usage.system) / 1e6);
    const memory = process.memoryUsage();
    rss.set(memory.rss);
    heap.set(memory.heapUsed);
    const now = performance.eventLoopUtilization();
    loop.set(Math.round(performance.eventLoopUtilization(now, lastLoop).utilization * 1000) / 1000);
    lastLoop = now;
  });
}

/** Answers a scrape: the registry's text with the format's content type. */
export async function sendMetrics(res: ServerResponse, registry: Registry): Promise<void> {
  const text = await registry.render();
  res.writeHead(200, { 'content-type': METRICS_CONTENT_TYPE });
  res.end(text);
}
