/**
 * How the CLI reaches a cluster. The controller is found, in order, from
 * `HAVEN_CONTROLLER` (`http://HOST:PORT` or `unix:/path`), the lab's socket,
 * then the one-machine cluster's socket; the token from `HAVEN_TOKEN` or the
 * token file beside it. With `--state-dir`/`--runc-root` (or `HAVEN_LOCAL=1`),
 * or when no cluster is running, commands act on the local host directly, as
 * the foundation's single-host commands always did.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createReadStream } from 'node:fs';
import { HavenError, InvalidArgumentError, NotLeaderError } from '../core/errors.js';
import {
  callJson,
  errorFrom,
  openRequest,
  UnreachableError,
  type CallOptions,
  type Endpoint,
} from '../core/http-client.js';
import { deterministicTarFile } from '../host/images.js';
import type { RegistryImage } from '../controller/image-registry.js';

/** Where the lab and the one-machine cluster keep their sockets and tokens. */
export const CLUSTER_PATHS = {
  labSocket: '/run/haven/lab/controller.sock',
  labToken: '/var/lib/haven-lab/token',
  localSocket: '/run/haven/controller.sock',
  localToken: '/var/lib/haven/token',
} as const;

/** A controller and the token to talk to it. */
export interface ClusterTarget {
  endpoint: Endpoint;
  token: string;
  /** How it was found, for messages. */
  via: string;
}

/** Finds the cluster the CLI should talk to, or undefined for local mode. */
export function findCluster(
  env: NodeJS.ProcessEnv = process.env,
  localFlags = false,
): ClusterTarget | undefined {
  if (localFlags || env.HAVEN_LOCAL === '1') return undefined;
  const explicit = env.HAVEN_CONTROLLER;
  if (explicit) {
    const tokenFile =
      explicit === `unix:${CLUSTER_PATHS.labSocket}` ? CLUSTER_PATHS.labToken : CLUSTER_PATHS.localToken;
    return { endpoint: explicit, token: tokenFrom(env, tokenFile), via: 'HAVEN_CONTROLLER' };
  }
  if (existsSync(CLUSTER_PATHS.labSocket)) {
    return {
      endpoint: `unix:${CLUSTER_PATHS.labSocket}`,
      token: tokenFrom(env, CLUSTER_PATHS.labToken),
      via: 'the lab',
    };
  }
  if (existsSync(CLUSTER_PATHS.localSocket)) {
    return {
      endpoint: `unix:${CLUSTER_PATHS.localSocket}`,
      token: tokenFrom(env, CLUSTER_PATHS.localToken),
      via: 'the local cluster',
    };
  }
  return undefined;
}

function tokenFrom(env: NodeJS.ProcessEnv, file: string): string {
  if (env.HAVEN_TOKEN) return env.HAVEN_TOKEN;
  try {
    return readFileSync(file, 'utf8').trim();
  } catch {
    throw new InvalidArgumentError(`no cluster token: set HAVEN_TOKEN or create ${file} (haven init)`);
  }
}

/** The controller's API, as the CLI uses it. */
export class ClusterClient {
  /**
   * Every controller's address: `HAVEN_CONTROLLER` may list several,
   * separated by commas (a control plane on etcd). Calls go to the one that
   * answered last; a standby's "not the leader" or an unreachable one moves
   * them on, to the leader it named if it did.
   */
  private readonly endpoints: Endpoint[];
  private current = 0;

  constructor(readonly target: ClusterTarget) {
    this.endpoints = target.endpoint.split(',').filter((e) => e.length > 0);
  }

  /** The controller calls go to now. */
  get endpoint(): Endpoint {
    return this.endpoints[this.current] ?? this.target.endpoint;
  }

  /** Calls the controller; an unreachable one is reported with where it was looked for. */
  async call<T>(path: string, options: CallOptions = {}): Promise<T> {
    for (let tries = 1; ; tries++) {
      try {
        return await callJson<T>(this.endpoint, path, this.target.token, options);
      } catch (error) {
        const elsewhere = error instanceof UnreachableError || error instanceof NotLeaderError;
        if (elsewhere && tries < 2 * this.endpoints.length) {
          const named =
            error instanceof NotLeaderError && error.leader ? this.endpoints.indexOf(error.leader) : -1;
          this.current = named >= 0 ? named : (this.current + 1) % this.endpoints.length;
          continue;
        }
        // Only a controller that could not be reached at all: its own 503s (a host down) pass through.
        if (error instanceof UnreachableError) {
          throw new HavenError(
            `cannot reach the Haven controller at ${this.target.endpoint} (found via ${this.target.via}): ${error.message}`,
            'unavailable',
            true,
          );
        }
        throw error;
      }
    }
  }

  /**
   * Makes sure an image is in the cluster: a directory or tar path is
   * uploaded (as the same deterministic tar a host would hash); anything else
   * is passed on as a name or ID for the controller to resolve.
   */
  async imageRef(ref: string, name?: string): Promise<string> {
    if (!(ref.startsWith('/') || ref.startsWith('.'))) return ref;
    if (!existsSync(ref)) throw new InvalidArgumentError(`image "${ref}" does not exist`);
    const image = await this.pushImage(ref, name);
    return image.id;
  }

  /** Uploads a directory (as a deterministic tar) or a tar file to the cluster's registry. */
  async pushImage(path: string, name?: string): Promise<RegistryImage> {
    const tar = statSync(path).isDirectory()
      ? await deterministicTarFile(path)
      : { file: path, cleanup: async () => {} };
    try {
      const query = name ? `?name=${encodeURIComponent(name)}` : '';
      const res = await openRequest(this.endpoint, `/v1/images${query}`, this.target.token, {
        method: 'PUT',
        payload: createReadStream(tar.file),
        headers: { 'content-type': 'application/x-tar' },
        timeoutMs: 600_000,
      });
      if ((res.statusCode ?? 500) >= 300) throw await errorFrom(res);
      const chunks: Buffer[] = [];
      for await (const chunk of res) chunks.push(chunk as Buffer);
      return JSON.parse(Buffer.concat(chunks).toString('utf8')) as RegistryImage;
    } finally {
      await tar.cleanup();
    }
  }
}
