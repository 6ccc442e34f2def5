/**
 * Schemas of every input the agent's HTTP API accepts. Nothing reaches the
 * host's code unvalidated: names are checked against the same rules as the
 * CLI's, sizes are bounded, and no field takes a host path (images are
 * referenced by content ID; volumes by name).
 */
import { z } from 'zod';
import { COMPRESS_SETTINGS } from '../replication/compression.js';

const NAME = /^[a-z0-9][a-z0-9_.-]{0,62}$/;

/** A container or volume name. */
export const nameSchema = z
  .string()
  .regex(NAME, 'use lower-case letters, digits, _ . - (at most 63), starting with a letter or digit')
  .refine((n) => !n.includes('..'), 'must not contain ".."');

/** An image ID: `sha256:<hex>` or a unique hex prefix (≥ 6) — never a path. */
export const imageIdSchema = z
  .string()
  .regex(/^(sha256:)?[0-9a-f]{6,64}$/, 'an image ID (sha256:…), never a path');

/**
 * The application watchdog (systemd's `WatchdogSec`): the container is given
 * `NOTIFY_SOCKET` and `WATCHDOG_USEC`, and must send `WATCHDOG=1` (or
 * `READY=1`) at least every `timeoutSeconds`; the first heartbeat is due
 * `initialDelaySeconds + timeoutSeconds` after a start or restore.
 */
export const watchdogSpecSchema = z
  .object({
    timeoutSeconds: z.number().min(0.1).max(3600),
    initialDelaySeconds: z.number().min(0).max(3600).default(0),
  })
  .strict();

export type WatchdogSpec = z.infer<typeof watchdogSpecSchema>;

/** `POST /v1/containers`. */
export const runRequestSchema = z
  .object({
    name: nameSchema,
    /** An image ID in this host's store: `sha256:<hex>` or a unique hex prefix (≥ 6). */
    image: imageIdSchema,
    args: z.array(z.string().max(4096)).min(1).max(256),
    env: z
      .array(
        z
          .string()
          .max(8192)
          .regex(/^[A-Za-z_][A-Za-z0-9_]*=/, 'KEY=VALUE'),
      )
      .max(256)
      .default([]),
    volumes: z
      .array(
        z.object({
          volume: nameSchema,
          path: z
            .string()
            .max(4096)
            .regex(/^\/[^\0]*$/, 'an absolute path inside the container')
            .refine((p) => p !== '/' && !p.split('/').includes('..'), 'must not be / or contain ..'),
        }),
      )
      .max(32)
      .default([]),
    ip: z
      .string()
      .regex(/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/, 'IPv4 ADDR/PREFIX')
      .optional(),
    memoryBytes: z
      .number()
      .int()
      .min(4 * 1024 * 1024)
      .max(2 ** 44)
      .optional(),
    /** Heartbeats the application must send (see {@link watchdogSpecSchema}). */
    watchdog: watchdogSpecSchema.optional(),
  })
  .strict();

/** `POST /v1/containers/:name/checkpoint`. */
export const checkpointRequestSchema = z
  .object({
    leaveRunning: z.boolean().default(false),
    keep: z.number().int().min(1).max(1000).optional(),
  })
  .strict();

/** `POST /v1/containers/:name/restore`. */
export const restoreRequestSchema = z
  .object({
    checkpoint: z
      .string()
      .regex(/^ck-[0-9a-z-]{1,60}$/)
      .optional(),
    tcpClose: z.boolean().default(false),
  })
  .strict();

/** `POST /v1/containers/:name/stop`. */
export const stopRequestSchema = z.object({ graceSeconds: z.number().min(0).max(3600).default(10) }).strict();

/** `POST /v1/containers/:name/protect`: replicate to a backup every interval, or stop (`backup: null`). */
export const protectRequestSchema = z
  .object({
    backup: z
      .object({
        host: nameSchema,
        address: z
          .string()
          .max(200)
          .regex(/^https?:\/\/[0-9a-zA-Z.[\]:-]+:\d{1,5}$/, 'http(s)://HOST:PORT'),
      })
      .strict()
      .nullable(),
    intervalMs: z.number().int().min(20).max(3_600_000).default(1000),
    mode: z.enum(['checkpoint', 'continuous']).default('checkpoint'),
    /** Continuous mode: the output commit's ports and the address clients use. */
    publish: z.array(z.number().int().min(1).max(65_535)).min(1).max(16).optional(),
    serviceAddress: z.string().ip({ version: 'v4' }).optional(),
  })
  .strict();

/** `POST /v1/probe`: can this host reach another agent? (indirect probing, as in SWIM). */
export const probeRequestSchema = z
  .object({
    address: z
      .string()
      .max(200)
      .regex(/^https?:\/\/[0-9a-zA-Z.[\]:-]+:\d{1,5}$/, 'http(s)://HOST:PORT'),
  })
  .strict();

/** `POST /v1/replicas/:name/missing`. */
export const missingChunksSchema = z
  .object({ hashes: z.array(z.string().regex(/^[0-9a-f]{64}$/)).max(4_000_000) })
  .strict();

/** `POST /v1/replicas/:name/stage`: assemble the newest intact epoch now (its primary's host is suspected). */
export const stageRequestSchema = z.object({}).strict();

/** `POST /v1/replicas/:name/promote`. */
export const promoteRequestSchema = z
  .object({
    tcpClose: z.boolean().default(true),
    /** Only this epoch (a switchover's final one), never an older one. */
    epoch: z.number().int().positive().optional(),
    /**
     * A migration's: the copy runs on trust until the controller confirms it
     * (`POST /v1/containers/:name/placed`); cut off before that, the host freezes it.
     */
    provisional: z.boolean().default(false),
  })
  .strict();

/** `POST /v1/containers/:name/placed`: the controller placed the container here (no options). */
export const placedRequestSchema = z.object({}).strict();

/** `POST /v1/containers/:name/handover`: a planned switchover's final epoch (no options yet). */
export const handoverRequestSchema = z.object({}).strict();

/** `POST /v1/containers/:name/recover`: restore a dead or hung protected container here, from its newest committed epoch. */
export const recoverRequestSchema = z.object({}).strict();

/** `POST /v1/containers/:name/migrate`: one round of a live migration, on its source host. */
export const migrateRoundSchema = z
  .object({
    /** The migration's ID: a final round ordered again with it joins or reports the one done. */
    id: z.string().regex(/^[0-9a-z-]{1,80}$/, 'a migration ID'),
    round: z.number().int().min(1).max(1000),
    /** Final: the container stops in this round's checkpoint, which is committed on the destination. */
    final: z.boolean(),
    /** Compression of this round's chunk stream (`replication/compression.ts`); absent: none. */
    compress: z.enum(COMPRESS_SETTINGS).optional(),
    to: z
      .object({
        host: nameSchema,
        address: z
          .string()
          .max(200)
          .regex(/^https?:\/\/[0-9a-zA-Z.[\]:-]+:\d{1,5}$/, 'http(s)://HOST:PORT'),
      })
      .strict(),
    /** Final round only: post-copy, this host's page server on `address:port` (see replication/post-copy.ts). */
    postCopy: z
      .object({
        address: z
          .string()
          .max(100)
          .regex(/^[0-9a-zA-Z.:-]+$/, 'an IP address or host name'),
        port: z.number().int().min(1024).max(65535),
      })
      .strict()
      .optional(),
  })
  .strict();

/** `POST /v1/replicas/:name/prepare`: a migration's destination fetches the image before anything stops. */
export const prepareReplicaSchema = z
  .object({
    image: imageIdSchema,
    /** The container's address (ADDR/PREFIX): its network is made here ahead of the freeze (ContainerHost.prepareNetwork). */
    network: z.string().max(32).optional(),
  })
  .strict();

/**
 * `POST /v1/containers/:name/migrate-facts`: what a migration's decision
 * weighs; the dirty rate's sample (a second long) only when asked, for `auto`.
 */
export const migrateFactsSchema = z.object({ sampleDirtyRate: z.boolean().default(true) }).strict();
