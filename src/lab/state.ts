/**
 * The lab's two state files. `lab.json` is the desired state, written only
 * by the `haven lab` commands; `status.json` is what the supervisor runs,
 * written only by the supervisor. One writer per file, each write atomic
 * (write a temporary file, rename), so a reader never sees half a file.
 *
 * `generation` counts writes of lab.json; the supervisor echoes the one it
 * has applied in status.json, so a command can wait until the supervisor
 * has acted on its change (kill-host must know no restart is pending).
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { z } from 'zod';
import { FailedPreconditionError } from '../core/errors.js';
import { LAB_PATHS } from './paths.js';

/** What a host should be: running and connected, dead, or running but cut off. */
export type HostState = 'up' | 'killed' | 'partitioned';

const hostSchema = z.object({
  name: z.string(),
  state: z.enum(['up', 'killed', 'partitioned']),
  /** With `partitioned`: only the host's own link is down; its containers keep their path to the client. */
  keepClient: z.boolean().default(false),
  /** A tbf rate in tc's words (`1gbit`), or null when the link is not shaped. */
  shapedRate: z.string().nullable().default(null),
  /** Percent of packets dropped at random on the host's link, or null. */
  lossPercent: z.number().nullable().default(null),
});

const labSchema = z.object({
  version: z.literal(1),
  generation: z.number().int(),
  hosts: z.array(hostSchema),
  controller: z.object({ partitioned: z.boolean() }),
  /**
   * The control plane: one controller on SQLite (default), or several on a
   * 3-member etcd (`lab up --store etcd --controllers N`), with each etcd
   * member's desired state (`kill-etcd` marks one killed).
   */
  controlPlane: z
    .object({
      store: z.enum(['sqlite', 'etcd']),
      controllers: z.number().int(),
      etcd: z.record(z.enum(['up', 'killed'])),
    })
    .default({ store: 'sqlite', controllers: 1, etcd: {} }),
  /** `lab up --tls`: controllers and agents speak mutual TLS with the lab's own CA (lab/tls.ts). */
  tls: z.boolean().default(false),
  /**
   * Directories `up` had to create outside the lab's own paths (mount points
   * such as /var/lib/haven): `down` removes them again if they are empty.
   */
  createdDirs: z.array(z.string()).default([]),
});

/** The lab's desired state (lab.json). */
export type LabSpec = z.infer<typeof labSchema>;
/** One host in {@link LabSpec}. */
export type LabHost = LabSpec['hosts'][number];

const processSchema = z.object({
  pid: z.number().int().nullable(),
  restarts: z.number().int(),
  /** Exit code or signal of the last exit, for diagnosis of crash loops. */
  lastExit: z.string().nullable(),
});

const statusSchema = z.object({
  supervisorPid: z.number().int(),
  /** The lab.json generation the supervisor has applied. */
  generation: z.number().int(),
  updatedAt: z.string(),
  controller: processSchema,
  /** The dashboard's loopback forwarder (absent in a status written before it existed). */
  forward: processSchema.optional(),
  hosts: z.record(processSchema),
  /** With --store etcd: every controller (`c1`…) and etcd member (`e1`…). */
  controllers: z.record(processSchema).optional(),
  etcd: z.record(processSchema).optional(),
});

/** What the supervisor runs now (status.json). */
export type SupervisorStatus = z.infer<typeof statusSchema>;
/** One supervised process in {@link SupervisorStatus}. */
export type ProcessStatus = z.infer<typeof processSchema>;

/** Writes a file atomically: readers see the old or the new content, never a part. */
export function writeFileAtomic(path: string, text: string, mode = 0o644): void {
  const temporary = `${path}.${process.pid}.tmp`;
  writeFileSync(temporary, text, { mode });
  renameSync(temporary, path);
}

/** Reads lab.json, or undefined when no lab exists. A malformed file is an error. */
export function readLabSpec(): LabSpec | undefined {
  if (!existsSync(LAB_PATHS.labJson)) return undefined;
  const parsed = labSchema.safeParse(JSON.parse(readFileSync(LAB_PATHS.labJson, 'utf8')));
  if (!parsed.success) {
    throw new FailedPreconditionError(
      `${LAB_PATHS.labJson} is malformed (${parsed.error.issues[0]?.message ?? 'invalid'}): run haven lab down`,
    );
  }
  return parsed.data;
}

/** Reads lab.json, failing with a clear message when no lab is up. */
export function requireLabSpec(): LabSpec {
  const spec = readLabSpec();
  if (!spec) throw new FailedPreconditionError('no lab is up: run haven lab up');
  return spec;
}

/** Writes lab.json with the next generation; returns the generation written. */
export function writeLabSpec(spec: LabSpec): number {
  spec.generation += 1;
  writeFileAtomic(LAB_PATHS.labJson, `${JSON.stringify(spec, null, 2)}\n`);
  return spec.generation;
}

/** A fresh lab.json for `count` hosts (generation 0: {@link writeLabSpec} makes it 1). */
export function newLabSpec(
  hosts: readonly string[],
  createdDirs: readonly string[],
  controlPlane: LabSpec['controlPlane'] = { store: 'sqlite', controllers: 1, etcd: {} },
): LabSpec {
  return {
    version: 1,
    generation: 0,
    hosts: hosts.map((name) => ({
      name,
      state: 'up',
      keepClient: false,
      shapedRate: null,
      lossPercent: null,
    })),
    controller: { partitioned: false },
    controlPlane,
    tls: false,
    createdDirs: [...createdDirs],
  };
}

/** Reads status.json, or undefined when the supervisor has not written it (or it is unreadable). */
export function readSupervisorStatus(): SupervisorStatus | undefined {
  try {
    const parsed = statusSchema.safeParse(JSON.parse(readFileSync(LAB_PATHS.status, 'utf8')));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/** Writes status.json (the supervisor only). */
export function writeSupervisorStatus(status: SupervisorStatus): void {
  writeFileAtomic(LAB_PATHS.status, `${JSON.stringify(status, null, 2)}\n`);
}

/** Makes the cluster token: 32 random bytes as hex, readable by root only. */
export function writeNewToken(): void {
  writeFileAtomic(LAB_PATHS.token, `${randomBytes(32).toString('hex')}\n`, 0o600);
}

/** The cluster token. */
export function readToken(): string {
  return readFileSync(LAB_PATHS.token, 'utf8').trim();
}
