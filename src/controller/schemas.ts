/**
 * Schemas of every input the controller's HTTP API accepts (the agent's own
 * are in `src/agent/schemas.ts`; shared parts come from there). Sizes are
 * bounded, names follow Haven's rules, and nothing takes a host path.
 */
import { z } from 'zod';
import { probeSpecSchema } from '../agent/probes.js';
import { nameSchema, runRequestSchema } from '../agent/schemas.js';
import { COMPRESS_SETTINGS } from '../replication/compression.js';

/** A host name: the same rules as container names. */
export const hostNameSchema = nameSchema;

const labelsSchema = z
  .record(z.string().regex(/^[a-z0-9][a-z0-9_./-]{0,62}$/, 'a label key'), z.string().max(63))
  .refine((labels) => Object.keys(labels).length <= 32, 'at most 32 labels');

/** A host's CPU flags, kernel and CRIU version, as its agent reports them. */
export const machineFactsSchema = z
  .object({
    arch: z.string().min(1).max(32),
    kernel: z.string().min(1).max(128),
    criuVersion: z.string().min(1).max(64),
    cpuFlags: z.array(z.string().regex(/^[a-z0-9_.-]{1,64}$/, 'a CPU flag')).max(1024),
  })
  .strict();

/** `POST /v1/hosts`: an agent announces itself. */
export const registerHostSchema = z
  .object({
    name: hostNameSchema,
    /** Where the controller reaches the agent's API. */
    address: z
      .string()
      .max(200)
      .regex(/^https?:\/\/[0-9a-zA-Z.[\]:-]+:\d{1,5}$/, 'http(s)://HOST:PORT'),
    labels: labelsSchema.default({}),
    cpuMillis: z.number().int().min(1).max(10_000_000),
    memoryBytes: z
      .number()
      .int()
      .min(1)
      .max(2 ** 50),
    /** Changes when the host's disk is new: the controller then knows its old containers are gone. */
    bootId: z.string().regex(/^[0-9a-f]{8,64}$/),
    /** The agent's heartbeat period: the failure detector's first estimate of this host's rhythm. */
    heartbeatMs: z.number().int().min(10).max(60_000).default(100),
    /** What checkpoints taken here need, and what this host can restore (`host/compat.ts`). */
    machine: machineFactsSchema.optional(),
  })
  .strict();

/** One container as an agent reports it in a heartbeat. */
export const reportedContainerSchema = z.object({
  name: nameSchema,
  state: z.enum(['running', 'checkpointed', 'stopped', 'exited', 'paused']),
  pid: z.number().int().min(0),
  ip: z.string().max(64),
});

/** A primary's replication progress for one container. */
export const protectionReportSchema = z.object({
  name: nameSchema,
  backup: nameSchema,
  committedEpoch: z.number().int().nullable(),
  committedAt: z.string().max(64).nullable(),
  sentBytes: z.number().min(0),
  totalBytes: z.number().min(0),
  frozenMs: z.number().min(0),
  epochMs: z.number().min(0),
  /** Epochs committed per second lately. */
  epochRate: z.number().min(0).optional(),
  /** Epochs committed since this primary began protecting it. */
  epochsCommitted: z.number().int().min(0).optional(),
  /** Where the newest epoch's time went (milliseconds). */
  phases: z
    .object({ checkpointMs: z.number().min(0), chunkMs: z.number().min(0), transferMs: z.number().min(0) })
    .optional(),
  lastError: z.string().max(2000).nullable(),
  /** Continuous protection: the output commit's state. */
  output: z
    .object({
      mode: z.enum(['held', 'passthrough']),
      connections: z.number().int().min(0),
      heldBytes: z.number().min(0),
      outputDelayMs: z.number().min(0),
    })
    .optional(),
});

/** One heartbeat line; `containers` only when they changed since the last line that had them. */
export const heartbeatSchema = z
  .object({
    seq: z.number().int().min(0),
    bootId: z.string().max(64),
    containers: z.array(reportedContainerSchema).max(10_000).optional(),
    /** Containers this host protects as primary, and their replication progress. */
    protection: z.array(protectionReportSchema).max(10_000).optional(),
    /** Probe results of this host's probed containers. */
    health: z
      .array(
        z.object({
          name: nameSchema,
          health: z.enum(['starting', 'healthy', 'unhealthy']),
          failures: z.number().int().min(0),
        }),
      )
      .max(10_000)
      .optional(),
    /** Containers this host holds replicas of, with the newest committed epoch. */
    replicas: z
      .array(z.object({ name: nameSchema, epoch: z.number().int().nullable() }))
      .max(10_000)
      .optional(),
  })
  .strict();

/** `POST /v1/containers` on the controller: the agent's run request plus placement. */
export const clusterRunSchema = runRequestSchema
  .omit({ image: true })
  .extend({
    /** An image name or ID in the cluster registry. */
    image: z
      .string()
      .regex(/^([a-z0-9][a-z0-9_.-]{0,62}|(sha256:)?[0-9a-f]{6,64})$/, 'an image name or ID, never a path'),
    /** Pin to a host. */
    host: hostNameSchema.optional(),
    cpuMillis: z.number().int().min(1).max(1_000_000).default(100),
    requireHostLabels: labelsSchema.optional(),
    with: z.array(nameSchema).max(64).optional(),
    apart: z.array(nameSchema).max(64).optional(),
    /** An application probe (Kubernetes' vocabulary), run by the container's agent. */
    probe: probeSpecSchema.optional(),
    /**
     * Protection: none; restart fresh elsewhere; checkpoint to a backup every
     * `intervalMs`; or continuous (Remus): epochs every `intervalMs`, output
     * held until its epoch is committed on the backup.
     */
    ha: z.enum(['none', 'restart', 'checkpoint', 'continuous']).default('none'),
    /** Default: 1 s for `checkpoint`, 100 ms for `continuous`. */
    intervalMs: z.number().int().min(20).max(3_600_000).optional(),
    /** Continuous protection: ports clients reach through the output commit at the service address. */
    publish: z.array(z.number().int().min(1).max(65_535)).min(1).max(16).optional(),
  })
  .strict()
  .superRefine((request, ctx) => {
    if (request.publish && request.ha !== 'continuous')
      ctx.addIssue({
        code: 'custom',
        path: ['publish'],
        message: 'publish needs --ha continuous (output commit)',
      });
    if (request.ha === 'continuous' && !request.publish)
      ctx.addIssue({
        code: 'custom',
        path: ['publish'],
        message: 'continuous protection holds output on published ports: give publish (--publish PORT)',
      });
    if (request.publish && new Set(request.publish).size !== request.publish.length)
      ctx.addIssue({ code: 'custom', path: ['publish'], message: 'each port once' });
    if (request.ha === 'checkpoint' && request.intervalMs !== undefined && request.intervalMs < 100)
      ctx.addIssue({
        code: 'custom',
        path: ['intervalMs'],
        message: 'checkpoint protection needs intervalMs ≥ 100',
      });
  });

/**
 * Whether a protection mode replicates epochs to a backup (and so has a
 * backup to fail over to): `checkpoint` and `continuous` do.
 */
export function replicated(ha: unknown): ha is 'checkpoint' | 'continuous' {
  return ha === 'checkpoint' || ha === 'continuous';
}

/** How a live migration moves a container, and the pause it may cost (shared by migrate and drain). */
const migrationOptions = {
  strategy: z.enum(['auto', 'stop-copy', 'pre-copy', 'post-copy', 'hybrid']).default('auto'),
  /** Compression of the chunk stream (`replication/compression.ts`); absent: none, as before. */
  compress: z.enum(COMPRESS_SETTINGS).optional(),
  /** The pause accepted: pre-copy rounds go on until what is left fits it. */
  maxDowntimeMs: z.number().int().min(1).max(600_000).default(300),
  /** Pre-copy rounds at most, before the final one. */
  maxRounds: z.number().int().min(1).max(30).default(8),
};

/** `POST /v1/containers/:name/migrate`: live migration; `to` absent lets placement choose. */
export const migrateRequestSchema = z.object({ to: hostNameSchema.optional(), ...migrationOptions }).strict();

/** `POST /v1/hosts/:name/drain`: cordon, then migrate every container off it, one at a time. */
export const drainRequestSchema = z.object(migrationOptions).strict();

/** `POST /v1/hosts/:name/cordon`. */
export const cordonSchema = z.object({ cordoned: z.boolean() }).strict();

/** Query of `GET /v1/events`. */
export const eventsQuerySchema = z.object({
  since: z.coerce.number().int().min(0).optional(),
  limit: z.coerce.number().int().min(1).max(10_000).default(1000),
});

export type ClusterRunRequest = z.infer<typeof clusterRunSchema>;
export type RegisterHostRequest = z.infer<typeof registerHostSchema>;
export type Heartbeat = z.infer<typeof heartbeatSchema>;
export type ReportedContainer = z.infer<typeof reportedContainerSchema>;
export type ProtectionReport = z.infer<typeof protectionReportSchema>;
