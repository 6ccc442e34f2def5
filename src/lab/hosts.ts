/**
 * A lab host: a network namespace on the lab's bridge plus a persistent mount
 * namespace in which the host sees only its own disk and runc root.
 *
 * Inside host hN's mount namespace (made from a copy of the root's):
 *
 *   /var/lib/haven      bind of /var/lib/haven-lab/hosts/hN   (its disk)
 *   /run/haven/runc     fresh tmpfs                           (its runc root)
 *   /var/lib/haven-lab  empty read-only tmpfs                 (other disks hidden)
 *   /run/haven/lab      empty read-only tmpfs                 (other hosts' namespaces hidden)
 *
 * The namespace is created with slave propagation, so network namespaces the
 * root later adds or deletes under /run/netns (shared) reach every host, while
 * the namespaces an agent adds for its containers stay in its host. Each
 * namespace is kept alive by a bind mount of its nsfs file under
 * /run/haven/lab/mnt, which must be a private mount: the kernel refuses to
 * bind a mount namespace where it would propagate (and copies of the root
 * namespace would otherwise each hold a reference to every earlier host).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { run } from '../core/exec.js';
import { shortHash } from '../runtime/network.js';
import { killCgroupTree, removeCgroupTree } from './cgroups.js';
import { attachScript, containerLinks, deleteLinks, deleteNetns, runScript } from './net.js';
import { HOST_VIEW, LAB_PATHS, hostAddress, hostCgroup, hostDisk, hostMountNs, hostNetns } from './paths.js';

/** Shell lines that make the private mount under which host mount-namespace files live. */
export function mountNsDirScript(): string[] {
  return [
    `mkdir -p ${LAB_PATHS.mntDir}`,
    `mount --bind ${LAB_PATHS.mntDir} ${LAB_PATHS.mntDir}`,
    `mount --make-private ${LAB_PATHS.mntDir}`,
  ];
}

/** Shell lines that create host `host` (netns, veth, disk, mount namespace). */
export function createHostScript(host: string): string[] {
  const mntns = hostMountNs(host);
  return [
    `mkdir -p ${hostDisk(host)}`,
    ...attachScript(host, hostNetns(host), hostAddress(host)),
    `touch ${mntns}`,
    `unshare --mount=${mntns} --propagation slave true`,
    `nsenter --mount=${mntns} -- sh -e <<'MNT'`,
    // Container root filesystems mounted in the root namespace (by Haven on
    // the root host, or tests) were copied in here. The root's mounts are
    // private, so their unmount would never reach this copy, which would keep
    // each overlay (and its upper dir, that overlayfs marks in use) alive.
    `awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "overlay") print $5; break } }' /proc/self/mountinfo \\`,
    '  | sort -r | while read -r m; do umount -l "$m" || true; done',
    `mount --bind ${hostDisk(host)} ${HOST_VIEW.stateDir}`,
    `mount -t tmpfs -o mode=0700 hvlab-${host}-runc ${HOST_VIEW.runcRoot}`,
    // Covered last: the bind above needed the real path to the disk.
    `mount -t tmpfs -o ro,mode=0755,size=4k hvlab-hidden ${LAB_PATHS.stateDir}`,
    `mount -t tmpfs -o ro,mode=0755,size=4k hvlab-hidden ${LAB_PATHS.runDir}`,
    'MNT',
  ];
}

/** Creates host `host` from nothing. Callers remove leftovers first ({@link destroyHost}). */
export async function createHost(host: string): Promise<void> {
  await runScript(createHostScript(host));
}

/**
 * Unmounts (lazily) every mount at or below `path` in the root namespace,
 * deepest first; a few rounds, for mounts stacked on one point.
 */
export async function unmountUnder(path: string): Promise<void> {
  for (let round = 0; round < 5; round++) {
    const points = [...new Set(mountPoints())].filter((p) => p === path || p.startsWith(`${path}/`));
    if (points.length === 0) return;
    points.sort((a, b) => b.length - a.length);
    for (const point of points) await run(['umount', '-l', point], { allowFailure: true });
  }
}

/** Mount points of the root namespace, from /proc/self/mountinfo (octal escapes decoded). */
export function mountPoints(): string[] {
  return mountInfoLines().map((line) =>
    (line.split(' ')[4] ?? '').replace(/\\([0-7]{3})/g, (_, o: string) =>
      String.fromCharCode(parseInt(o, 8)),
    ),
  );
}

/** Lines of /proc/self/mountinfo. */
export function mountInfoLines(): string[] {
  try {
    return readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .filter((l) => l.length > 0);
  } catch {
    return [];
  }
}

/**
 * Removes everything of host `host`: kills all its processes (agent, shims,
 * containers) through its cgroups, deletes its container links and its
 * namespaces, its mount namespace, its disk and its cgroup directories.
 * Idempotent; each step runs even when an earlier one found nothing.
 * Returns what could not be removed (empty when clean).
 */
export async function destroyHost(host: string): Promise<string[]> {
  const left: string[] = [];
  const cgroup = hostCgroup(host);
  const alive = await killCgroupTree(cgroup);
  if (alive.length > 0) left.push(`processes ${alive.join(' ')} in cgroup ${cgroup}`);
  await deleteLinks(await containerLinks(host));
  await deleteNetns(hostNetns(host));
  await unmountUnder(hostMountNs(host));
  await rm(hostMountNs(host), { force: true });
  await removeContainerNetnsFiles(host);
  await rm(hostDisk(host), { recursive: true, force: true });
  left.push(...(await removeCgroupTree(cgroup)).map((d) => `cgroup ${d}`));
  return left;
}

/**
 * Container namespaces an agent made live as bind mounts inside its host's
 * mount namespace only; the root sees just the empty files under /run/netns
 * (the directory is shared by all). Once the host's mount namespace is gone,
 * those files are all that is left: remove them.
 */
async function removeContainerNetnsFiles(host: string): Promise<void> {
  if (!existsSync('/run/netns')) return;
  const prefix = `hvc-${shortHash(host)}-`;
  for (const name of readdirSync('/run/netns').filter((n) => n.startsWith(prefix))) {
    // `ip netns del` unmounts if it is a mount here, then unlinks.
    await run(['ip', 'netns', 'del', name], { allowFailure: true });
  }
}
