/**
 * An adaptive failure detector: the φ (phi) accrual detector of Hayashibara
 * et al. (2004), as Cassandra and Akka use it. Each host's heartbeat
 * inter-arrival times are kept in a sliding window; silence is judged against
 * that host's own rhythm: φ(t) = −log10 P(a beat arrives later than t), with
 * the inter-arrival times taken as normally distributed. A host is suspected
 * when φ crosses a threshold. A steady host on a quiet network is suspected
 * after a few hundred milliseconds of silence; one whose beats come irregularly
 * (a busy machine, a lossy link) gets proportionally more time, up to a hard
 * ceiling; never less than a floor.
 *
 * Pure: time comes in as arguments. The hot path (`beat`) is a few
 * arithmetic operations; the check (`suspectAt`) is a comparison with a
 * deadline computed at each beat, so checking a thousand hosts every 25 ms
 * costs next to nothing.
 */

/** Options of {@link ArrivalWindow}. */
export interface PhiAccrualOptions {
  /** Suspect when φ reaches this (default 8: one chance in 10^8 that a live host's beat is merely late). */
  threshold: number;
  /** Inter-arrival times remembered (default 100: ten seconds at 100 ms beats). */
  windowSize: number;
  /** The expected interval before any is measured (the agent's heartbeat period). */
  expectedIntervalMs: number;
  /** Floor under the measured standard deviation: timer jitter a live host always has (default 25 ms). */
  minStdDevMs: number;
  /**
   * Never suspect before this much silence (default 3.5 intervals: three
   * beats lost in a row — at 2% loss, one chance in 125,000 — before a
   * steady host is suspected; two in a row happen every few minutes).
   */
  minSilenceMs: number;
  /** Always suspect after this much silence, however irregular the host (the operator's `--failure-ms`). */
  maxSilenceMs: number;
}

/** Defaults for a host beating every `intervalMs`, suspected after at most `maxSilenceMs`. */
export function phiAccrualDefaults(intervalMs: number, maxSilenceMs: number): PhiAccrualOptions {
  return {
    threshold: 8,
    windowSize: 100,
    expectedIntervalMs: intervalMs,
    minStdDevMs: 25,
    minSilenceMs: Math.min(maxSilenceMs, 3.5 * intervalMs),
    maxSilenceMs,
  };
}

/**
 * φ for a silence of `elapsedMs` given the interval mean and standard
 * deviation (the logistic approximation of the normal CDF that Akka uses,
 * accurate to ~1e-3 and without `erf`).
 */
export function phi(elapsedMs: number, meanMs: number, stdDevMs: number): number {
  const y = (elapsedMs - meanMs) / stdDevMs;
  const e = Math.exp(-y * (1.5976 + 0.070566 * y * y));
  return elapsedMs > meanMs ? -Math.log10(e / (1 + e)) : -Math.log10(1 - 1 / (1 + e));
}

/** The normalised silence `y = (t − mean) / σ` at which φ reaches `threshold` (bisection, once per threshold). */
export function thresholdDeviations(threshold: number): number {
  let low = 0;
  let high = 50;
  for (let i = 0; i < 60; i++) {
    const mid = (low + high) / 2;
    if (phi(mid, 0, 1) < threshold) low = mid;
    else high = mid;
  }
  return high;
}

/** One host's heartbeat history. */
export class ArrivalWindow {
  private readonly intervals: Float64Array;
  private count = 0;
  private next = 0;
  private sum = 0;
  private sumOfSquares = 0;
  private lastBeat: number | undefined;
  /** When this host becomes suspect if no beat comes first. */
  private deadline = Number.POSITIVE_INFINITY;
  /** Excused since the last beat (see {@link excuse}). */
  private excused = 0;
  private readonly deviations: number;

  constructor(private readonly options: PhiAccrualOptions) {
    this.intervals = new Float64Array(options.windowSize);
    this.deviations = thresholdDeviations(options.threshold);
  }

  /** A heartbeat arrived at `now`. */
  beat(now: number): void {
    // A beat after the host was already suspected ends an outage (a
    // partition, an agent restart, the controller's own cut link): that gap is
    // not the host's rhythm, and counting it would make the detector slow to
    // suspect for the next hundred beats.
    if (this.lastBeat !== undefined && now < this.deadline) {
      const interval = now - this.lastBeat;
      if (this.count === this.intervals.length) {
        const old = this.intervals[this.next]!;
        this.sum -= old;
        this.sumOfSquares -= old * old;
      } else this.count++;
      this.intervals[this.next] = interval;
      this.next = (this.next + 1) % this.intervals.length;
      this.sum += interval;
      this.sumOfSquares += interval * interval;
    }
    this.lastBeat = now;
    this.deadline = now + this.timeoutMs();
    this.excused = 0;
  }

  /** Starts over (a new registration): the history of a previous boot says nothing of this one. */
  reset(now: number): void {
    this.count = 0;
    this.next = 0;
    this.sum = 0;
    this.sumOfSquares = 0;
    this.lastBeat = undefined;
    this.beat(now);
  }

  /** Mean and standard deviation of the intervals (seeded with the expected interval until there are a few). */
  stats(): { meanMs: number; stdDevMs: number } {
    const { expectedIntervalMs, minStdDevMs } = this.options;
    if (this.count < 3)
      return { meanMs: expectedIntervalMs, stdDevMs: Math.max(minStdDevMs, expectedIntervalMs / 4) };
    const meanMs = this.sum / this.count;
    const variance = Math.max(0, this.sumOfSquares / this.count - meanMs * meanMs);
    return { meanMs, stdDevMs: Math.max(minStdDevMs, Math.sqrt(variance)) };
  }

  /** The silence after which this host is suspected, within [minSilenceMs, maxSilenceMs]. */
  timeoutMs(): number {
    const { meanMs, stdDevMs } = this.stats();
    const adaptive = meanMs + this.deviations * stdDevMs;
    return Math.min(this.options.maxSilenceMs, Math.max(this.options.minSilenceMs, adaptive));
  }

  /** φ now (0 before the first beat). */
  phiAt(now: number): number {
    if (this.lastBeat === undefined) return 0;
    const { meanMs, stdDevMs } = this.stats();
    return phi(now - this.lastBeat, meanMs, stdDevMs);
  }

  /** Whether the host is suspected at `now`. */
  suspectAt(now: number): boolean {
    return now >= this.deadline;
  }

  /**
   * Pushes the deadline back by `ms`: time during which the detector itself
   * could not listen (its process stalled) is not the host's silence. At
   * most `maxSilenceMs` per silence: a detector that is never well must still
   * suspect a dead host in the end.
   */
  excuse(ms: number): void {
    const granted = Math.min(ms, this.options.maxSilenceMs - this.excused);
    if (granted <= 0) return;
    this.excused += granted;
    this.deadline += granted;
  }

  /** Milliseconds of this silence excused so far (the detector's own deafness). */
  get excusedMs(): number {
    return this.excused;
  }

  /** Milliseconds since the last beat (null before the first). */
  silenceAt(now: number): number | null {
    return this.lastBeat === undefined ? null : now - this.lastBeat;
  }
}
