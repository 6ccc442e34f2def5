/**
 * Epoch manifests are authenticated end to end. Chunks are content-addressed
 * (a chunk is stored under the SHA-256 of its bytes and checked on arrival
 * and on assembly), so what must not be forged is the manifest that lists
 * those hashes — with it, an attacker who can reach a backup could have it
 * restore a process image of their choosing.
 *
 * The sender (`transfer.ts`'s `commitEpoch`, for replication and migration
 * alike) adds `mac`: HMAC-SHA256 over the manifest's canonical JSON (keys
 * sorted, no `mac`), keyed by HKDF of the cluster token — material every
 * agent of the cluster holds and nothing outside it does. The receiver
 * (`ReplicaStore.commit`) refuses a manifest whose MAC is missing or wrong
 * before anything is committed, and checks it again whenever it reads a
 * committed epoch back (`ReplicaStore.manifest`, before every restore), so a
 * manifest altered on the backup's disk is reported as a damaged epoch, not
 * restored.
 *
 * ```ts
 * const key = manifestKey(token);
 * const sent = signManifest(manifest, key);   // { ...manifest, mac }
 * verifyManifest(sent, key);                  // throws CorruptCheckpointError if altered
 * ```
 */
import { createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';
import { CorruptCheckpointError } from '../core/errors.js';

/** The key of manifest MACs for a cluster: HKDF-SHA256 of its token (32 bytes). */
export function manifestKey(clusterToken: string): Buffer {
  return Buffer.from(hkdfSync('sha256', clusterToken, 'haven', 'epoch manifest mac v1', 32));
}

/** JSON with object keys sorted at every level: the same bytes on both ends, whatever order fields were built in. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') {
    if (typeof value === 'number' && !Number.isFinite(value))
      throw new CorruptCheckpointError('a manifest holds a number JSON cannot carry');
    return JSON.stringify(value) ?? 'null';
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
}

function macOf(manifest: object, key: Buffer): string {
  const rest: Record<string, unknown> = { ...(manifest as Record<string, unknown>) };
  delete rest.mac;
  return createHmac('sha256', key).update(canonicalJson(rest)).digest('hex');
}

/** The manifest with its MAC (`mac`, hex), as it travels and is stored. */
export function signManifest<T extends object>(manifest: T, key: Buffer): T & { mac: string } {
  return { ...manifest, mac: macOf(manifest, key) };
}

/**
 * Checks a manifest's MAC (constant-time). Throws {@link CorruptCheckpointError}
 * naming what failed: no MAC, or one that does not match its content.
 */
export function verifyManifest(manifest: object, key: Buffer, what = 'epoch manifest'): void {
  const mac = (manifest as { mac?: unknown }).mac;
  if (typeof mac !== 'string' || !/^[0-9a-f]{64}$/.test(mac))
    throw new CorruptCheckpointError(`${what} carries no MAC: refused (not from this cluster)`);
  const expected = Buffer.from(macOf(manifest, key), 'hex');
  if (!timingSafeEqual(expected, Buffer.from(mac, 'hex')))
    throw new CorruptCheckpointError(`${what} fails authentication: altered, or not from this cluster`);
}
