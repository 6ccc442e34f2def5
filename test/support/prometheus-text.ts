/**
 * A strict parser of the Prometheus text exposition format (0.0.4), for
 * tests: it throws, naming the line, on anything Prometheus would reject or
 * that the format's rules forbid — a malformed HELP/TYPE, a sample before its
 * TYPE or apart from its family, a bad name, an unknown escape in a label
 * value, a repeated label or series, an unparsable value, a negative counter —
 * and checks each histogram: `le` ascending and ending at `+Inf`, cumulative
 * counts that never fall, `_count` equal to the `+Inf` bucket, a `_sum`.
 */

/** One sample line. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** One metric family: its TYPE, HELP and samples in order. */
export interface MetricFamily {
  name: string;
  type: 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';
  help: string;
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

/** A value as Go's ParseFloat takes it in this format; throws otherwise. */
function parseValue(text: string, where: string): number {
  if (text === '+Inf' || text === 'Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  if (text === 'NaN') return NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) throw new Error(`${where}: bad value "${text}"`);
  return Number(text);
}

/** Undoes HELP escapes (`\\` and `\n` only). */
function unescapeHelp(text: string, where: string): string {
  return text.replace(/\\(.?)/g, (_m, c: string) => {
    if (c === '\\') return '\\';
    if (c === 'n') return '\n';
    throw new Error(`${where}: bad escape "\\${c}" in HELP`);
  });
}

/** Parses `{a="x",b="y"}` starting at `text[0] === '{'`; returns the labels and the rest of the line. */
function parseLabels(text: string, where: string): { labels: Record<string, string>; rest: string } {
  const labels: Record<string, string> = {};
  let i = 1;
  for (;;) {
    if (text[i] === '}') return { labels, rest: text.slice(i + 1) };
    const eq = text.indexOf('=', i);
    if (eq < 0) throw new Error(`${where}: label without "="`);
    const name = text.slice(i, eq);
    if (!LABEL.test(name) || name.startsWith('__')) throw new Error(`${where}: bad label name "${name}"`);
    if (name in labels) throw new Error(`${where}: label "${name}" repeated`);
    if (text[eq + 1] !== '"') throw new Error(`${where}: label value not quoted`);
    let value = '';
    let j = eq + 2;
    for (;;) {
      const c = text[j];
      if (c === undefined) throw new Error(`${where}: unterminated label value`);
      if (c === '"') break;
      if (c === '\\') {
        const e = text[j + 1];
        if (e === '\\') value += '\\';
        else if (e === '"') value += '"';
        else if (e === 'n') value += '\n';
        else throw new Error(`${where}: bad escape "\\${e ?? ''}" in a label value`);
        j += 2;
      } else {
        value += c;
        j++;
      }
    }
    labels[name] = value;
    i = j + 1;
    if (text[i] === ',') i++;
    else if (text[i] !== '}') throw new Error(`${where}: expected "," or "}" after a label`);
  }
}

/** The family a sample name belongs to, given the families declared so far. */
function familyOf(sample: string, families: Map<string, MetricFamily>): MetricFamily | undefined {
  const direct = families.get(sample);
  if (direct && direct.type !== 'histogram' && direct.type !== 'summary') return direct;
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (!sample.endsWith(suffix)) continue;
    const family = families.get(sample.slice(0, -suffix.length));
    if (family && (family.type === 'histogram' || (family.type === 'summary' && suffix !== '_bucket')))
      return family;
  }
  if (direct?.type === 'summary') return direct; // a quantile line
  return undefined;
}

/** Parses exposition text strictly; throws on the first violation. */
export function parsePrometheusText(text: string): Map<string, MetricFamily> {
  if (text.length > 0 && !text.endsWith('\n')) throw new Error('the text must end with a line feed');
  const families = new Map<string, MetricFamily>();
  const finished = new Set<string>();
  let current: MetricFamily | undefined;
  const seen = new Set<string>();
  const lines = text.split('\n').slice(0, -1);
  lines.forEach((line, index) => {
    const where = `line ${index + 1} (${line.slice(0, 80)})`;
    if (line.trim() === '') return;
    if (line.startsWith('#')) {
      const match = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(line);
      if (!match) return; // a plain comment
      const [, kind, name, rest = ''] = match;
      if (!NAME.test(name!)) throw new Error(`${where}: bad metric name`);
      if (finished.has(name!)) throw new Error(`${where}: family ${name} continued after another`);
      let family = families.get(name!);
      if (!family) {
        if (current) finished.add(current.name);
        family = { name: name!, type: 'untyped', help: '', samples: [] };
        families.set(name!, family);
        current = family;
      } else if (family !== current) throw new Error(`${where}: family ${name} split`);
      if (kind === 'TYPE') {
        if (!TYPES.has(rest)) throw new Error(`${where}: unknown type "${rest}"`);
        if (family.samples.length > 0) throw new Error(`${where}: TYPE after samples`);
        family.type = rest as MetricFamily['type'];
      } else family.help = unescapeHelp(rest, where);
      return;
    }
    const nameMatch = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
    if (!nameMatch) throw new Error(`${where}: not a sample`);
    const name = nameMatch[0];
    let rest = line.slice(name.length);
    let labels: Record<string, string> = {};
    if (rest.startsWith('{')) ({ labels, rest } = parseLabels(rest, where));
    const parts = rest.split(' ');
    if (parts[0] !== '' || parts.length < 2 || parts.length > 3)
      throw new Error(`${where}: expected " VALUE [TIMESTAMP]"`);
    const value = parseValue(parts[1]!, where);
    if (parts[2] !== undefined && !/^-?\d+$/.test(parts[2])) throw new Error(`${where}: bad timestamp`);
    let family = familyOf(name, families);
    if (!family) {
      // A sample without TYPE is an untyped family of its own.
      if (current) finished.add(current.name);
      if (families.has(name) || finished.has(name)) throw new Error(`${where}: family ${name} split`);
      family = { name, type: 'untyped', help: '', samples: [] };
      families.set(name, family);
      current = family;
    }
    if (family !== current) throw new Error(`${where}: sample of ${family.name} apart from its family`);
    if (family.type === 'histogram' && name === `${family.name}_bucket` && !('le' in labels))
      throw new Error(`${where}: a bucket without "le"`);
    if (family.type === 'counter' && !(value >= 0)) throw new Error(`${where}: a counter must be ≥ 0`);
    const key = `${name}${JSON.stringify(Object.entries(labels).sort())}`;
    if (seen.has(key)) throw new Error(`${where}: series repeated`);
    seen.add(key);
    family.samples.push({ name, labels, value });
  });
  for (const family of families.values()) if (family.type === 'histogram') checkHistogram(family);
  return families;
}

/** A histogram's series are consistent: buckets ascend to +Inf, counts never fall, _count = +Inf bucket, a _sum. */
function checkHistogram(family: MetricFamily): void {
  const bySeries = new Map<string, { buckets: Array<[number, number]>; sum?: number; count?: number }>();
  for (const s of family.samples) {
    const { le, ...rest } = s.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    const series = bySeries.get(key) ?? { buckets: [] };
    bySeries.set(key, series);
    if (s.name === `${family.name}_bucket`)
      series.buckets.push([parseValue(le!, `${family.name} le`), s.value]);
    else if (s.name === `${family.name}_sum`) series.sum = s.value;
    else series.count = s.value;
  }
  for (const [key, series] of bySeries) {
    const where = `histogram ${family.name}${key}`;
    if (series.buckets.length === 0) throw new Error(`${where}: no buckets`);
    for (let i = 1; i < series.buckets.length; i++) {
      if (!(series.buckets[i]![0] > series.buckets[i - 1]![0])) throw new Error(`${where}: le not ascending`);
      if (series.buckets[i]![1] < series.buckets[i - 1]![1]) throw new Error(`${where}: bucket counts fall`);
    }
    const last = series.buckets[series.buckets.length - 1]!;
    if (last[0] !== Infinity) throw new Error(`${where}: no +Inf bucket`);
    if (series.count === undefined || series.count !== last[1])
      throw new Error(`${where}: _count ${series.count} is not the +Inf bucket ${last[1]}`);
    if (series.sum === undefined) throw new Error(`${where}: no _sum`);
  }
}

/** The value of the sample `name` whose labels include `labels`, or undefined. */
export function sampleValue(
  families: Map<string, MetricFamily>,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  for (const family of families.values()) {
    for (const s of family.samples) {
      if (s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)) return s.value;
    }
  }
  return undefined;
}
