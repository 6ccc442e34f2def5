/**
 * `haven doctor`: checks everything Haven needs from this machine and says,
 * for anything missing, the exact command that fixes it.
 */
import { b3sum } from '../host/blake3.js';
import { existsSync, readFileSync } from 'node:fs';
import { run } from '../core/exec.js';
import type { HostConfig } from '../core/config.js';
import { HOLD_RULE } from '../runtime/network.js';

/** The outcome of one check. */
export interface DoctorCheck {
  name: string;
  ok: boolean;
  /** Required checks make Haven unusable when they fail; optional ones only disable a feature. */
  required: boolean;
  detail: string;
  fix?: string;
}

const SETUP = 'bash scripts/setup-host.sh   (from the Haven checkout, as root)';

async function tool(argv: string[]): Promise<{ ok: boolean; out: string }> {
  try {
    const r = await run(argv, { allowFailure: true, timeoutMs: 20_000 });
    return { ok: r.code === 0, out: `${r.stdout}${r.stderr}`.trim() };
  } catch (error) {
    return { ok: false, out: (error as Error).message };
  }
}

/** Runs every check. */
export async function runDoctor(config: HostConfig): Promise<DoctorCheck[]> {
  const checks: DoctorCheck[] = [];
  const add = (c: DoctorCheck): void => void checks.push(c);

  add({
    name: 'root',
    ok: process.getuid?.() === 0,
    required: true,
    detail: 'Haven drives runc, CRIU and network namespaces, which need root',
    fix: 'run haven as root',
  });

  const criu = await tool([config.criuPath, '--version']);
  const version = /Version:\s*(\S+)/.exec(criu.out)?.[1];
  const [maj = 0, min = 0] = (version ?? '0.0').split('.').map(Number);
  add({
    name: 'criu version',
    ok: criu.ok && (maj > 4 || (maj === 4 && min >= 2)),
    required: true,
    detail: version
      ? `criu ${version} at ${config.criuPath} (need >= 4.2: 3.17 fails on this kernel's vDSO, 4.1 cannot dump TCP on >= 6.16)`
      : `no criu at ${config.criuPath}`,
    fix: SETUP,
  });
  const check = await tool([config.criuPath, 'check']);
  add({
    name: 'criu check',
    ok: check.ok,
    required: true,
    detail: check.out.split('\n').pop() ?? '',
    fix: SETUP,
  });

  const kdat = existsSync('/run/haven/criu/criu.kdat');
  add({
    name: 'criu kerndat cache',
    ok: kdat,
    required: false,
    detail: kdat
      ? 'CRIU keeps its kernel probe in /run/haven/criu (saves ~40 ms per checkpoint)'
      : 'no cache yet in /run/haven/criu: Haven mounts it on first checkpoint; a CRIU not built by setup never uses it',
    fix: SETUP,
  });
  const dirty = await tool([config.criuPath, 'check', '--feature', 'mem_dirty_track']);
  add({
    name: 'soft-dirty tracking',
    ok: dirty.ok,
    required: false,
    detail: dirty.ok
      ? 'memory changes are tracked: pre-dump and incremental epochs are available'
      : 'CONFIG_MEM_SOFT_DIRTY is off: every dump is a full dump; pre-copy uses content-diff rounds instead',
    fix: 'a kernel built with CONFIG_MEM_SOFT_DIRTY=y',
  });
  const uffd = await tool([config.criuPath, 'check', '--feature', 'uffd-noncoop']);
  add({
    name: 'userfaultfd',
    ok: uffd.ok,
    required: false,
    detail: uffd.ok
      ? 'lazy pages (post-copy migration) available'
      : 'no userfaultfd: post-copy migration unavailable',
    fix: 'sysctl -w vm.unprivileged_userfaultfd=1 or a kernel with CONFIG_USERFAULTFD',
  });
  const pipeMax = Number(readFileSync('/proc/sys/fs/pipe-max-size', 'utf8'));
  add({
    name: 'fs.pipe-max-size',
    ok: pipeMax >= 4194304,
    required: false,
    detail: `${pipeMax} (lazy pages need >= 4194304 without CAP_SYS_RESOURCE)`,
    fix: 'sysctl -w fs.pipe-max-size=4194304',
  });

  const runc = await tool([config.runcPath, '--version']);
  add({
    name: 'runc',
    ok: runc.ok,
    required: true,
    detail: runc.out.split('\n')[0] ?? '',
    fix: 'apt-get install runc',
  });

  const cgroups = existsSync('/sys/fs/cgroup/freezer') || existsSync('/sys/fs/cgroup/cgroup.controllers');
  add({
    name: 'cgroups',
    ok: cgroups,
    required: true,
    detail: existsSync('/sys/fs/cgroup/cgroup.controllers')
      ? 'cgroup v2'
      : cgroups
        ? 'cgroup v1 with freezer'
        : 'no freezer cgroup found',
    fix: 'mount the cgroup v1 freezer hierarchy or cgroup v2 at /sys/fs/cgroup',
  });

  const iptables = await tool(['iptables', '-w', '-L', '-n']);
  add({
    name: 'iptables',
    ok: iptables.ok,
    required: true,
    detail: iptables.ok ? 'works (CRIU locks TCP connections with it)' : iptables.out,
    fix: 'apt-get install iptables',
  });
  // The hold (runtime/network.ts): clients' packets kept, not dropped, while a container is locked.
  const probe = `hvdoctor-${process.pid}`;
  const nfqueue = await tool([
    'sh',
    '-c',
    `ip netns add ${probe} && ip netns exec ${probe} ${HOLD_RULE}; status=$?; ip netns del ${probe}; exit $status`,
  ]);
  add({
    name: 'NFQUEUE',
    ok: nfqueue.ok,
    required: false,
    detail: nfqueue.ok
      ? "available: clients' packets are held, not dropped, while a container is locked"
      : `${nfqueue.out} — without it packets met while locked are dropped (clients wait for their retransmission timers)`,
    fix: 'a kernel with CONFIG_NETFILTER_NETLINK_QUEUE and the NFQUEUE target',
  });
  const b3 = b3sum();
  add({
    name: 'b3sum',
    ok: b3 !== undefined,
    required: false,
    detail: b3
      ? 'BLAKE3 for the large files of checkpoint archives (~4x faster than SHA-256 here)'
      : 'not installed: archives are written with SHA-256 (slower), and archives whose hashes are BLAKE3 cannot be imported',
    fix: 'apt-get install b3sum',
  });
  const tc = await tool(['tc', 'qdisc', 'show']);
  add({
    name: 'tc',
    ok: tc.ok,
    required: false,
    detail: tc.ok ? 'traffic control available (lab link shaping)' : tc.out,
    fix: 'apt-get install iproute2',
  });
  const ip = await tool(['ip', 'netns', 'list']);
  add({
    name: 'ip netns',
    ok: ip.ok,
    required: true,
    detail: ip.ok ? 'network namespaces available' : ip.out,
    fix: 'apt-get install iproute2',
  });
  const overlay = readFileSync('/proc/filesystems', 'utf8').includes('overlay');
  add({
    name: 'overlayfs',
    ok: overlay,
    required: true,
    detail: overlay ? 'available' : 'missing',
    fix: 'modprobe overlay',
  });
  add({
    name: 'haven-shim',
    ok: existsSync(config.shimPath),
    required: true,
    detail: config.shimPath,
    fix: 'npm run build',
  });
  add({
    name: 'haven-netlock',
    ok: existsSync(config.netlockPath),
    required: true,
    detail: config.netlockPath,
    fix: 'npm run build',
  });
  return checks;
}
