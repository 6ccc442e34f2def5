/**
 * Can this host run a checkpoint taken on that one? The facts a checkpoint
 * needs — architecture, CPU features (`/proc/cpuinfo` flags), kernel and
 * CRIU versions — are recorded in every checkpoint's manifest (`origin`),
 * reported by every agent when it registers, and compared here, by the
 * controller before anything stops (placement, migration, failover backups)
 * and by the agent before any restore or import.
 *
 * The rules (see {@link incompatibility}):
 *   - the same architecture;
 *   - every CPU flag of the source: a restored process keeps using the
 *     instructions it probed at start (glibc picks its memcpy by CPUID once),
 *     and one the CPU lacks kills it with SIGILL — users see exactly that;
 *   - a CRIU no older (major.minor) than the one that dumped: older CRIUs
 *     may not know image entries newer ones write;
 *   - a kernel no older (major.minor) than the source's: the processes may
 *     use system calls and socket options the older one lacks, and CRIU
 *     restores them as they were.
 * A version that is `unknown` on either side is not held against a host.
 *
 * Test knob: `HAVEN_TEST_CPU_MASK` hides CPU flags from what a host reports
 * *and* checks, as if its CPU lacked them — `avx2,sse4_2` on every host, or
 * `h2=avx2;h3=sse4_2` per host name. The lab passes it from `haven lab up`
 * to every agent. It exists so tests can show a refused migration on a
 * machine whose hosts all share one CPU; it never adds a flag.
 */
import { readFile } from 'node:fs/promises';
import { arch, release } from 'node:os';
import { run } from '../core/exec.js';

/** What a checkpoint needs of a machine, and what a machine offers: the same facts. */
export interface MachineFacts {
  arch: string;
  kernel: string;
  criuVersion: string;
  /** CPU feature flags, sorted. */
  cpuFlags: string[];
}

/** The environment variable of the test knob (see the module comment). */
export const CPU_MASK_VARIABLE = 'HAVEN_TEST_CPU_MASK';

/** The flags `HAVEN_TEST_CPU_MASK` hides on host `host` (empty when unset). Pure. */
export function maskedFlags(mask: string | undefined, host: string): Set<string> {
  const hidden = new Set<string>();
  if (!mask) return hidden;
  for (const part of mask.split(';')) {
    const eq = part.indexOf('=');
    const target = eq >= 0 ? part.slice(0, eq).trim() : undefined;
    if (target !== undefined && target !== host) continue;
    for (const flag of (eq >= 0 ? part.slice(eq + 1) : part).split(','))
      if (flag.trim()) hidden.add(flag.trim());
  }
  return hidden;
}

/** The CPU flags in a `/proc/cpuinfo` text, sorted. Pure. */
export function parseCpuFlags(cpuinfo: string): string[] {
  const line = /^flags\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? '';
  return [...new Set(line.split(/\s+/).filter((f) => f.length > 0))].sort();
}

/**
 * This machine's facts, as host `hostName` reports and checks them (the test
 * mask applied). Reads `/proc/cpuinfo` and runs `criu --version`.
 */
export async function localMachine(criuPath: string, hostName: string): Promise<MachineFacts> {
  const { stdout } = await run([criuPath, '--version'], { allowFailure: true });
  const hidden = maskedFlags(process.env[CPU_MASK_VARIABLE], hostName);
  const flags = parseCpuFlags(await readFile('/proc/cpuinfo', 'utf8')).filter((f) => !hidden.has(f));
  return {
    arch: arch(),
    kernel: release(),
    criuVersion: /Version:\s*(\S+)/.exec(stdout)?.[1] ?? 'unknown',
    cpuFlags: flags,
  };
}

/** `[major, minor]` of a version like `6.18.0-1-amd64` or `4.2.1`, or undefined. Pure. */
export function majorMinor(version: string): [number, number] | undefined {
  const m = /^(\d+)\.(\d+)/.exec(version);
  return m ? [Number(m[1]), Number(m[2])] : undefined;
}

function older(have: string, need: string): boolean {
  const a = majorMinor(have);
  const b = majorMinor(need);
  if (!a || !b) return false;
  return a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);
}

/**
 * Why a host with `host`'s facts cannot run a checkpoint that `needs`, or
 * undefined if it can (the rules in the module comment). Pure.
 */
export function incompatibility(needs: MachineFacts, host: MachineFacts): string | undefined {
  if (needs.arch !== host.arch) return `it was taken on ${needs.arch}, this host is ${host.arch}`;
  const have = new Set(host.cpuFlags);
  const missing = needs.cpuFlags.filter((f) => !have.has(f));
  if (missing.length > 0) {
    const shown = missing.slice(0, 12).join(' ') + (missing.length > 12 ? ' …' : '');
    return `the CPU lacks features the checkpoint's processes may use (SIGILL on restore): ${shown}`;
  }
  if (older(host.criuVersion, needs.criuVersion))
    return `CRIU ${host.criuVersion} is older than the ${needs.criuVersion} that took the checkpoint`;
  if (older(host.kernel, needs.kernel))
    return `kernel ${host.kernel} is older than the ${needs.kernel} the checkpoint was taken on`;
  return undefined;
}
