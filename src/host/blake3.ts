/**
 * BLAKE3 of large checkpoint files, through Debian's `b3sum`.
 *
 * An archive's content is hashed twice on the critical path of every
 * export + import: once as it is written (the manifest carries the
 * hashes), once as it is read back (every byte is checked before a
 * restore). SHA-256 runs at ~1.3 GB/s here (SHA-NI, one core, 256 MB in
 * 200–245 ms); `b3sum` hashes the same 256 MB in ~50 ms (AVX-512, both
 * cores, the file mapped rather than read). BLAKE3 is a cryptographic hash
 * like SHA-256: a manifest that names it detects the same corruption.
 *
 * Where `b3sum` is not installed, callers keep SHA-256: a manifest records
 * per file which of the two it carries, and readers check either.
 */
import { existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { RuntimeFailedError } from '../core/errors.js';
import { run } from '../core/exec.js';

/**
 * Files from this size up are hashed with BLAKE3 when `b3sum` is there;
 * smaller ones (most of a checkpoint's dozens of files) are read and
 * SHA-256'd in this process, which costs less than a process start.
 */
export const BLAKE3_MIN_BYTES = 1 << 20;

/** Paths per `b3sum` invocation: far below the kernel's argument limit. */
const PATHS_PER_RUN = 512;

let b3sumPath: string | null | undefined;

/** Where `b3sum` is, or undefined if it is not on the PATH. */
export function b3sum(): string | undefined {
  if (b3sumPath === undefined) {
    const dirs = (process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(delimiter);
    b3sumPath = dirs.map((d) => join(d, 'b3sum')).find((p) => existsSync(p)) ?? null;
  }
  return b3sumPath ?? undefined;
}

/**
 * BLAKE3 (hex) of each file in `paths`, in order. `b3sum` maps each file
 * and hashes it on every core.
 * @throws RuntimeFailedError if `b3sum` is missing (and there is a file to
 *   hash) or cannot read a file.
 */
export async function blake3Files(paths: readonly string[]): Promise<string[]> {
  if (paths.length === 0) return []; // nothing to hash: no b3sum needed
  const tool = b3sum();
  if (!tool) throw new RuntimeFailedError('b3sum is not installed (Debian package "b3sum")', 'b3sum', []);
  const hashes: string[] = [];
  for (let i = 0; i < paths.length; i += PATHS_PER_RUN) {
    const batch = paths.slice(i, i + PATHS_PER_RUN);
    const { stdout, stderr, code } = await run([tool, '--no-names', '--', ...batch], { allowFailure: true });
    const lines = stdout.split('\n').filter((line) => /^[0-9a-f]{64}$/.test(line));
    if (code !== 0 || lines.length !== batch.length) {
      throw new RuntimeFailedError(`hashing with b3sum failed (exit ${code})`, 'b3sum', [stderr.trim()]);
    }
    hashes.push(...lines);
  }
  return hashes;
}
