/**
 * OCI runtime configuration (`config.json`) for a Haven container: a pure
 * function of the container's spec and where its parts live on this host.
 */

/** Where the application watchdog's directory appears inside a container. */
export const NOTIFY_DIR_IN_CONTAINER = '/run/haven-notify';
/** The sd_notify socket's file name in that directory (bound by haven-shim on the host side). */
export const NOTIFY_SOCKET_NAME = 'notify.sock';

/** A bind mount of a Haven volume into the container. */
export interface BundleMount {
  source: string;
  destination: string;
}

/** Inputs of {@link ociConfig}. */
export interface BundleSpec {
  rootfs: string;
  args: readonly string[];
  env: readonly string[];
  hostname: string;
  netnsPath: string;
  /** A cgroup path unique on the machine: lab hosts share one cgroup tree. */
  cgroupsPath: string;
  memoryLimitBytes?: number;
  mounts: readonly BundleMount[];
  /** CRIU configuration file runc hands to CRIU (`org.criu.config`). */
  criuConfigFile: string;
  /**
   * Host directories that stand in for the container's in-memory file
   * systems. CRIU archives every tmpfs with `tar | gzip` inside the freeze
   * (~4 ms each); bind mounts are external to it and cost nothing. So /dev
   * and /dev/shm are bind mounts of these directories (captured with the
   * writable layer), and /sys/firmware is masked by a read-only empty
   * directory instead of runc's read-only tmpfs.
   */
  dev: { devDir: string; shmDir: string; emptyDir: string };
  /**
   * The application watchdog: `hostDir` (where haven-shim binds the sd_notify
   * socket) is bind-mounted at {@link NOTIFY_DIR_IN_CONTAINER}, and the
   * application is told where to send heartbeats and how often, with
   * systemd's variables `NOTIFY_SOCKET` and `WATCHDOG_USEC`. The directory,
   * not the socket file, is mounted: a restore's new shim binds a new socket
   * at the same path, and the container must see that one.
   */
  watchdog?: { hostDir: string; timeoutUsec: number };
}

/** Builds the OCI config for runc. */
export function ociConfig(spec: BundleSpec): Record<string, unknown> {
  const caps = [
    'CAP_CHOWN',
    'CAP_DAC_OVERRIDE',
    'CAP_FSETID',
    'CAP_FOWNER',
    'CAP_MKNOD',
    'CAP_NET_RAW',
    'CAP_SETGID',
    'CAP_SETUID',
    'CAP_SETFCAP',
    'CAP_SETPCAP',
    'CAP_NET_BIND_SERVICE',
    'CAP_SYS_CHROOT',
    'CAP_KILL',
    'CAP_AUDIT_WRITE',
  ];
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: 0, gid: 0 },
      args: spec.args,
      env: [
        'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
        ...spec.env,
        ...(spec.watchdog
          ? [
              `NOTIFY_SOCKET=${NOTIFY_DIR_IN_CONTAINER}/${NOTIFY_SOCKET_NAME}`,
              `WATCHDOG_USEC=${spec.watchdog.timeoutUsec}`,
            ]
          : []),
      ],
      cwd: '/',
      capabilities: { bounding: caps, effective: caps, permitted: caps, ambient: caps },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }],
      noNewPrivileges: true,
    },
    root: { path: spec.rootfs, readonly: false },
    hostname: spec.hostname,
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      { destination: '/dev', type: 'bind', source: spec.dev.devDir, options: ['rbind', 'nosuid', 'rw'] },
      {
        destination: '/dev/pts',
        type: 'devpts',
        source: 'devpts',
        options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'],
      },
      {
        destination: '/dev/shm',
        type: 'bind',
        source: spec.dev.shmDir,
        options: ['rbind', 'nosuid', 'noexec', 'nodev', 'rw'],
      },
      {
        destination: '/dev/mqueue',
        type: 'mqueue',
        source: 'mqueue',
        options: ['nosuid', 'noexec', 'nodev'],
      },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      { destination: '/sys/firmware', type: 'bind', source: spec.dev.emptyDir, options: ['rbind', 'ro'] },
      ...spec.mounts.map((m) => ({
        destination: m.destination,
        type: 'bind',
        source: m.source,
        options: ['rbind', 'rw'],
      })),
      ...(spec.watchdog
        ? [
            {
              destination: NOTIFY_DIR_IN_CONTAINER,
              type: 'bind',
              source: spec.watchdog.hostDir,
              options: ['rbind', 'nosuid', 'noexec', 'nodev', 'rw'],
            },
          ]
        : []),
    ],
    annotations: { 'org.criu.config': spec.criuConfigFile },
    linux: {
      cgroupsPath: spec.cgroupsPath,
      resources: {
        devices: [{ allow: false, access: 'rwm' }],
        ...(spec.memoryLimitBytes ? { memory: { limit: spec.memoryLimitBytes } } : {}),
      },
      namespaces: [
        { type: 'pid' },
        { type: 'network', path: spec.netnsPath },
        { type: 'ipc' },
        { type: 'uts' },
        { type: 'mount' },
      ],
      maskedPaths: [
        '/proc/kcore',
        '/proc/latency_stats',
        '/proc/timer_list',
        '/proc/timer_stats',
        '/proc/sched_debug',
      ],
      readonlyPaths: [
        '/proc/asound',
        '/proc/bus',
        '/proc/fs',
        '/proc/irq',
        '/proc/sys',
        '/proc/sysrq-trigger',
      ],
    },
  };
}
