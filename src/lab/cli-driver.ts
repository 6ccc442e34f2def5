/**
 * Driving Haven as a user does, from programs: the demo, benchmarks and
 * end-to-end tests run the real `haven` CLI as a child process and wait for
 * the cluster to reach a state. Shared here so they all do it the same way.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT } from '../core/config.js';
import { run, type ExecResult } from '../core/exec.js';

/** Variables that would point the CLI elsewhere than the cluster the caller chose. */
const LOCAL_VARIABLES = [
  'HAVEN_CONTROLLER',
  'HAVEN_TOKEN',
  'HAVEN_STATE_DIR',
  'HAVEN_RUNC_ROOT',
  'HAVEN_LOCAL',
];

/**
 * Runs `haven ARGS` and returns its result, whatever its exit status. The
 * CLI finds the cluster by itself (the lab's socket) unless `env` says
 * otherwise: the caller's own `HAVEN_*` variables are not passed on.
 */
export function runHaven(
  args: readonly string[],
  env: NodeJS.ProcessEnv = {},
  timeoutMs = 300_000,
): Promise<ExecResult> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env };
  for (const key of LOCAL_VARIABLES) delete childEnv[key];
  return run([join(REPO_ROOT, 'bin', 'haven'), ...args], {
    allowFailure: true,
    timeoutMs,
    env: { ...childEnv, ...env },
  });
}

/** Polls `probe` every 100 ms until it returns a value (errors count as "not yet"); throws after `timeoutMs`. */
export async function waitUntil<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}
