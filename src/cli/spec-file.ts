/**
 * Container spec files: `haven run -f redis.yaml`. A YAML file in
 * Kubernetes' vocabulary for everything `haven run`'s flags express, mapped
 * onto the same run request (see `clusterRunSchema`). Unknown fields are
 * errors, not ignored: a misspelt `livenesProbe` in an HA spec would
 * otherwise leave a container silently unmonitored.
 *
 * @example
 * ```yaml
 * name: redis
 * image: redis
 * command: [/usr/bin/redis-server]
 * args: [--bind, 0.0.0.0]
 * resources: { cpu: 500m, memory: 512Mi }
 * livenessProbe: { tcpSocket: { port: 6379 }, periodSeconds: 1 }
 * watchdog: { timeoutSeconds: 2 }
 * ha: checkpoint
 * interval: 1s
 * ```
 */
import { readFile } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import yaml from 'js-yaml';
import { z } from 'zod';
import { probeSpecSchema, type ProbeSpec } from '../agent/probes.js';
import { nameSchema, watchdogSpecSchema, type WatchdogSpec } from '../agent/schemas.js';
import { InvalidArgumentError } from '../core/errors.js';
import type { VolumeMount } from '../host/container-host.js';

/**
 * A run request before it is sent: the fields of `POST /v1/containers`, each
 * optional, so that a file's values and flags can be merged.
 */
export interface RunDraft {
  name?: string;
  /** A registry name or ID, or a path (a file's relative paths are resolved against the file's directory). */
  image?: string;
  args?: string[];
  env?: string[];
  volumes?: VolumeMount[];
  ip?: string;
  memoryBytes?: number;
  cpuMillis?: number;
  host?: string;
  requireHostLabels?: Record<string, string>;
  with?: string[];
  apart?: string[];
  probe?: ProbeSpec;
  watchdog?: WatchdogSpec;
  ha?: 'none' | 'restart' | 'checkpoint' | 'continuous';
  intervalMs?: number;
  publish?: number[];
}

/** `500m` (millicores), `0.5` or `2` (cores), as Kubernetes writes CPU. */
const cpuSchema = z.union([z.number(), z.string()]).transform((value, ctx) => {
  const text = String(value).trim();
  const milli = /^(\d+)m$/.exec(text);
  const cores = /^\d+(\.\d+)?$/.test(text) ? Number(text) : undefined;
  const millis = milli ? Number(milli[1]) : cores !== undefined ? Math.round(cores * 1000) : NaN;
  if (!Number.isInteger(millis) || millis < 1 || millis > 1_000_000) {
    ctx.addIssue({
      code: 'custom',
      message: `expected CPU such as 500m (millicores) or 2 (cores), got "${text}"`,
    });
    return z.NEVER;
  }
  return millis;
});

const MEMORY_UNITS: Record<string, number> = {
  '': 1,
  Ki: 1024,
  Mi: 1024 ** 2,
  Gi: 1024 ** 3,
  Ti: 1024 ** 4,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
};

/** `512Mi`, `1Gi`, `500M` or a number of bytes, as Kubernetes writes memory (lower-case `m` is milli there: refused). */
const memorySchema = z.union([z.number(), z.string()]).transform((value, ctx) => {
  const text = String(value).trim();
  const match = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(text);
  const bytes = match ? Math.round(Number(match[1]) * MEMORY_UNITS[match[2] ?? '']!) : NaN;
  if (!Number.isSafeInteger(bytes) || bytes < 4 * 1024 * 1024 || bytes > 2 ** 44) {
    ctx.addIssue({
      code: 'custom',
      message: `expected a memory size from 4Mi to 16Ti such as 512Mi, 1Gi or 500M, got "${text}"`,
    });
    return z.NEVER;
  }
  return bytes;
});

/** `500ms`, `1s`, `1.5s`, `2m`. */
const durationSchema = z.string().transform((text, ctx) => {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m)$/.exec(text.trim());
  if (!match) {
    ctx.addIssue({ code: 'custom', message: `expected a duration such as 500ms, 1s or 2m, got "${text}"` });
    return z.NEVER;
  }
  return Math.round(Number(match[1]) * (match[2] === 'ms' ? 1 : match[2] === 's' ? 1000 : 60_000));
});

const labelKeySchema = z.string().regex(/^[a-z0-9][a-z0-9_./-]{0,62}$/, 'a label key');

/** The fields of a spec file (flat: one container per file). */
export const specFileSchema = z
  .object({
    /** Optional, for the day the format changes; only this version exists. */
    apiVersion: z.literal('haven/v1').optional(),
    kind: z.literal('Container').optional(),
    name: nameSchema.optional(),
    image: z.string().min(1).max(4096).optional(),
    /** The executable and its first arguments; `args` follow it (images have no entrypoint). */
    command: z.array(z.string().max(4096)).min(1).max(256).optional(),
    args: z.array(z.string().max(4096)).max(256).optional(),
    env: z
      .array(
        z
          .object({
            name: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name'),
            value: z.union([z.string(), z.number(), z.boolean()]).transform(String).default(''),
          })
          .strict(),
      )
      .max(256)
      .optional(),
    volumeMounts: z
      .array(z.object({ name: nameSchema, mountPath: z.string().max(4096) }).strict())
      .max(32)
      .optional(),
    /** `ADDR/PREFIX`; allocated when absent. */
    ip: z
      .string()
      .regex(/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/, 'IPv4 ADDR/PREFIX')
      .optional(),
    resources: z
      .object({
        /** Reserved for placement (`--cpu`). */
        cpu: cpuSchema.optional(),
        /** The container's memory limit, also reserved for placement (`--memory`). */
        memory: memorySchema.optional(),
      })
      .strict()
      .optional(),
    /** Pins the container to a host (`--host`), as Kubernetes' `nodeName`. */
    nodeName: nameSchema.optional(),
    /** Host labels a host must have (`--label-require K=V`). */
    nodeSelector: z
      .record(labelKeySchema, z.union([z.string().max(63), z.number(), z.boolean()]).transform(String))
      .optional(),
    /** Containers to run beside (`--with`) and never beside (`--apart`). */
    affinity: z
      .object({
        with: z.array(nameSchema).max(64).optional(),
        apart: z.array(nameSchema).max(64).optional(),
      })
      .strict()
      .optional(),
    livenessProbe: probeSpecSchema.optional(),
    watchdog: watchdogSpecSchema.optional(),
    ha: z.enum(['none', 'restart', 'checkpoint', 'continuous']).optional(),
    /** How often a `checkpoint`-protected container is checkpointed to its backup (the epoch, for `continuous`). */
    interval: durationSchema.optional(),
    /** `continuous`: ports clients reach through the output commit. */
    publish: z.array(z.number().int().min(1).max(65_535)).min(1).max(16).optional(),
  })
  .strict();

/** Parses and checks a spec file's text; `source` names it in errors. @throws InvalidArgumentError */
export function parseSpecFile(text: string, source: string, baseDir = '.'): RunDraft {
  let document: unknown;
  try {
    // The core schema: YAML 1.2 scalars only (no dates, no binary); duplicate keys are errors.
    document = yaml.load(text, { filename: source, schema: yaml.CORE_SCHEMA });
  } catch (error) {
    if (error instanceof yaml.YAMLException) {
      const at = error.mark ? `:${error.mark.line + 1}:${error.mark.column + 1}` : '';
      throw new InvalidArgumentError(`${source}${at}: ${error.reason}`);
    }
    throw error;
  }
  if (document === null || typeof document !== 'object' || Array.isArray(document)) {
    throw new InvalidArgumentError(`${source}: expected a mapping of fields (name: …, image: …)`);
  }
  const parsed = specFileSchema.safeParse(document);
  if (!parsed.success) {
    throw new InvalidArgumentError(
      parsed.error.issues.map((issue) => `${source}: ${describeIssue(issue)}`).join('\n'),
    );
  }
  const spec = parsed.data;
  const args = [...(spec.command ?? []), ...(spec.args ?? [])];
  const image =
    spec.image !== undefined && (spec.image.startsWith('./') || spec.image.startsWith('../'))
      ? resolve(baseDir, spec.image)
      : spec.image;
  return {
    ...(spec.name !== undefined ? { name: spec.name } : {}),
    ...(image !== undefined ? { image } : {}),
    ...(args.length > 0 ? { args } : {}),
    ...(spec.env ? { env: spec.env.map((e) => `${e.name}=${e.value}`) } : {}),
    ...(spec.volumeMounts
      ? { volumes: spec.volumeMounts.map((m) => ({ volume: m.name, path: m.mountPath })) }
      : {}),
    ...(spec.ip !== undefined ? { ip: spec.ip } : {}),
    ...(spec.resources?.memory !== undefined ? { memoryBytes: spec.resources.memory } : {}),
    ...(spec.resources?.cpu !== undefined ? { cpuMillis: spec.resources.cpu } : {}),
    ...(spec.nodeName !== undefined ? { host: spec.nodeName } : {}),
    ...(spec.nodeSelector ? { requireHostLabels: spec.nodeSelector } : {}),
    ...(spec.affinity?.with ? { with: spec.affinity.with } : {}),
    ...(spec.affinity?.apart ? { apart: spec.affinity.apart } : {}),
    ...(spec.livenessProbe ? { probe: spec.livenessProbe } : {}),
    ...(spec.watchdog ? { watchdog: spec.watchdog } : {}),
    ...(spec.ha !== undefined ? { ha: spec.ha } : {}),
    ...(spec.interval !== undefined ? { intervalMs: spec.interval } : {}),
    ...(spec.publish !== undefined ? { publish: spec.publish } : {}),
  };
}

/** Reads and checks a spec file. @throws InvalidArgumentError */
export async function loadSpecFile(path: string): Promise<RunDraft> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new InvalidArgumentError(
      `cannot read spec file ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`,
    );
  }
  return parseSpecFile(text, basename(path), dirname(resolve(path)));
}

/**
 * Merges flags over a file: a flag replaces the file's value of the same
 * field, except `env` and `requireHostLabels`, which are merged per key (the
 * flag's value wins).
 */
export function mergeRunDrafts(file: RunDraft, flags: RunDraft): RunDraft {
  const merged: RunDraft = { ...file, ...flags };
  if (file.env && flags.env) merged.env = mergeByKey(file.env, flags.env);
  if (file.requireHostLabels && flags.requireHostLabels)
    merged.requireHostLabels = { ...file.requireHostLabels, ...flags.requireHostLabels };
  return merged;
}

function mergeByKey(base: readonly string[], over: readonly string[]): string[] {
  const key = (entry: string): string => entry.slice(0, entry.indexOf('='));
  const overridden = new Set(over.map(key));
  return [...base.filter((e) => !overridden.has(key(e))), ...over];
}

/** One zod issue as `path: what is wrong`, in words a user of the file understands. */
function describeIssue(issue: z.ZodIssue): string {
  const path = formatPath(issue.path);
  const at = path ? `${path}: ` : '';
  switch (issue.code) {
    case 'invalid_type':
      return issue.received === 'undefined'
        ? `${at}is required`
        : `${at}expected ${article(issue.expected)}, got ${article(issue.received)}`;
    case 'unrecognized_keys':
      return issue.keys
        .map((key) => {
          const hint = suggest(key, knownKeys(issue.path));
          return `${formatPath([...issue.path, key])}: unknown field${hint ? ` (did you mean ${hint}?)` : ''}`;
        })
        .join('\n');
    case 'invalid_literal':
      return `${at}expected ${JSON.stringify(issue.expected)}`;
    case 'invalid_enum_value':
      return `${at}expected one of ${issue.options.join(', ')}, got ${JSON.stringify(issue.received)}`;
    case 'invalid_union':
      return `${at}${issue.unionErrors[0]?.issues[0]?.message ?? 'has the wrong type'}`;
    default:
      return `${at}${issue.message}`;
  }
}

/** `livenessProbe.exec.command[0]` */
function formatPath(path: readonly (string | number)[]): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? p : `.${p}`)).join('');
}

function article(type: string): string {
  const plain = type === 'array' ? 'list' : type === 'object' ? 'mapping' : type;
  return /^[aeiou]/.test(plain) ? `an ${plain}` : `a ${plain}`;
}

/** The field names the schema allows at `path` (for "did you mean"). */
function knownKeys(path: readonly (string | number)[]): string[] {
  let schema: z.ZodTypeAny = specFileSchema;
  const unwrap = (s: z.ZodTypeAny): z.ZodTypeAny => {
    for (;;) {
      if (s instanceof z.ZodOptional || s instanceof z.ZodNullable) s = s.unwrap() as z.ZodTypeAny;
      else if (s instanceof z.ZodDefault) s = s.removeDefault() as z.ZodTypeAny;
      else if (s instanceof z.ZodEffects) s = s.innerType() as z.ZodTypeAny;
      else return s;
    }
  };
  for (const step of path) {
    schema = unwrap(schema);
    if (typeof step === 'number' && schema instanceof z.ZodArray) schema = schema.element as z.ZodTypeAny;
    else if (typeof step === 'string' && schema instanceof z.ZodObject)
      schema = (schema.shape as Record<string, z.ZodTypeAny>)[step] ?? z.never();
    else return [];
  }
  schema = unwrap(schema);
  return schema instanceof z.ZodObject ? Object.keys(schema.shape as object) : [];
}

/** The known key closest to a misspelt one (at most 2 edits, or a different case), if any. */
function suggest(key: string, known: readonly string[]): string | undefined {
  let best: { name: string; distance: number } | undefined;
  for (const name of known) {
    const distance = name.toLowerCase() === key.toLowerCase() ? 0 : editDistance(key, name);
    if (distance <= 2 && (!best || distance < best.distance)) best = { name, distance };
  }
  return best?.name;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(
        previous[j]! + 1,
        current[j - 1]! + 1,
        previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    previous = current;
  }
  return previous[b.length]!;
}
