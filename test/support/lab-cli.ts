/**
 * The `haven` CLI as the lab's end-to-end tests drive it: against the lab's
 * controller (found by its socket), failing the test on a non-zero exit.
 */
import assert from 'node:assert/strict';
import type { ExecResult } from '../../src/core/exec.js';
import { runHaven, waitUntil } from '../../src/lab/cli-driver.js';

/** `haven ARGS`, whatever its exit status. */
export function haven(args: string[]): Promise<ExecResult> {
  return runHaven(args, {}, 180_000);
}

/** `haven ARGS`, which must succeed; its stdout. */
export async function ok(args: string[]): Promise<string> {
  const r = await haven(args);
  assert.equal(r.code, 0, `haven ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** Waits (30 s by default) until `probe` returns a value. */
export function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 30_000,
): Promise<T> {
  return waitUntil(what, probe, timeoutMs);
}
