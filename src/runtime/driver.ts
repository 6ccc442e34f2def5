/**
 * The runtime driver interface: everything Haven asks of a container runtime.
 * The runc + CRIU implementation (`runc/runc-driver.ts`) is the only module
 * that spawns runc or criu; unit tests of pure logic may use a fake.
 */

/** State of a container as the runtime sees it. */
export type RuntimeState = 'created' | 'running' | 'paused' | 'stopped';

/** A container known to the runtime. */
export interface RuntimeStatus {
  id: string;
  state: RuntimeState;
  /** PID of the container's init in the host's PID namespace (0 when stopped). */
  pid: number;
  bundle: string;
}

/** How to create a container. */
export interface CreateRequest {
  id: string;
  /** OCI bundle directory holding `config.json`. */
  bundle: string;
  /** Network namespace the container joins (and runc runs in, so CRIU's iptables calls land there). */
  netnsPath: string;
  /** File that receives the container's stdout and stderr. */
  logFile: string;
  /** File written with the container's exit status when its init ends. */
  exitFile: string;
  /**
   * The application watchdog: the shim binds an sd_notify socket at `socket`
   * (a host path the bundle bind-mounts into the container) and records the
   * heartbeats it receives in `stateFile` (see native/haven-shim.c).
   */
  notify?: { socket: string; stateFile: string };
}

/** Options of one checkpoint. */
export interface CheckpointOptions {
  /** Directory for CRIU's images (created if missing). */
  imageDir: string;
  /** Directory for CRIU's logs and statistics. */
  workDir: string;
  /** Keep the container running after the dump (otherwise it is stopped, as with Podman). */
  leaveRunning?: boolean;
  /** Dump established TCP connections (CRIU's TCP repair mode). */
  tcpEstablished?: boolean;
  /** Images of a previous pre-dump to diff against (needs soft-dirty tracking). */
  parentImageDir?: string;
  /** Only dump memory, leave the container running (iterative migration). */
  preDump?: boolean;
  /** Leave memory for a lazy-pages server instead of writing it all (post-copy). */
  lazyPages?: boolean;
  /** Send pages to a CRIU page server at `host:port` instead of local files. */
  pageServer?: string;
  /** Network namespace in which to run CRIU (so connection locks land in it). */
  netnsPath: string;
  /** Dump through `runc checkpoint` instead of Haven's direct CRIU call (for comparison). */
  viaRunc?: boolean;
  /**
   * Freeze the container's cgroup right before the dump (and thaw after a
   * leave-running one) in the dump's own process chain, rather than leaving
   * the freeze to CRIU, whose cgroup v1 freeze sleeps 100 ms on its first look.
   */
  freeze?: boolean;
  /**
   * With `freeze` and `leaveRunning`: after a successful dump leave the
   * container frozen. A stopping checkpoint is done this way, so that the
   * container is killed only once its checkpoint is safe on disk, and simply
   * thawed if persisting it fails.
   */
  keepFrozen?: boolean;
  /**
   * Commands run in the container's network namespace in the same process
   * chain as CRIU, like CRIU's action scripts: `before` in order (any failure
   * aborts the dump), `alongside` in parallel with CRIU, `after` once CRIU has
   * finished (always, also when it failed). Inside a freeze every process
   * start counts, and one start from a large parent process costs more than
   * several from a shell.
   */
  hooks?: CheckpointHooks;
}

/** See {@link CheckpointOptions.hooks}. */
export interface CheckpointHooks {
  before?: readonly (readonly string[])[];
  alongside?: readonly (readonly string[])[];
  after?: readonly (readonly string[])[];
  /**
   * A holder already running in the namespace (`haven-netlock hold
   * --idle`, see runtime/network.ts) that keeps what clients send while the
   * lock is on: sent SIGUSR1 after the `before` hooks, and SIGUSR2 after the
   * `after` hooks (the unlock, which must come before the thaw: a thawed
   * container's answers would meet the lock) to let what it kept through.
   * Signals, from bash's `kill` builtin: no process start inside the freeze.
   */
  holderPid?: number;
}

/** Options of one restore. */
export interface RestoreOptions extends CreateRequest {
  imageDir: string;
  workDir: string;
  tcpEstablished?: boolean;
  /** Close restored established connections at once (failover to an older epoch). */
  tcpClose?: boolean;
  /** Restore with lazy pages served by a lazy-pages daemon sharing `workDir`. */
  lazyPages?: boolean;
}

/** CRIU's own statistics of a dump, in milliseconds and pages. */
export interface DumpStats {
  /** Time to freeze the tasks. */
  freezingMs: number;
  /** Time the tasks were frozen (CRIU's view of the freeze). */
  frozenMs: number;
  memdumpMs: number;
  memwriteMs: number;
  pagesScanned: number;
  pagesWritten: number;
  pagesSkippedParent: number;
  pagesLazy: number;
}

/** CRIU's statistics of a restore. */
export interface RestoreStats {
  forkingMs: number;
  restoreMs: number;
  pagesRestored: number;
}

/** Result of a checkpoint: CRIU's stats and the wall time we measured. */
export interface CheckpointResult {
  stats: DumpStats | undefined;
  wallMs: number;
  /** With `freeze`: the freeze's phases, stamped inside the dump's process chain. */
  freeze?: { freezeMs: number; dumpMs: number; thawMs: number };
}

/** Result of a restore. */
export interface RestoreResult {
  status: RuntimeStatus;
  stats: RestoreStats | undefined;
  wallMs: number;
}

/** What Haven needs from a container runtime. */
export interface RuntimeDriver {
  /** Creates the container (processes exist, not yet started). */
  create(request: CreateRequest): Promise<RuntimeStatus>;
  /** Starts a created container's user process. */
  start(id: string): Promise<void>;
  /** The runtime's view of one container, or undefined if it does not know it. */
  state(id: string): Promise<RuntimeStatus | undefined>;
  /** Every container in this runtime root. */
  list(): Promise<RuntimeStatus[]>;
  kill(id: string, signal: string): Promise<void>;
  /**
   * Runs a command inside a running container (an exec probe); resolves to its
   * exit status, or -1 if it did not finish within `timeoutMs`.
   */
  exec(id: string, argv: readonly string[], timeoutMs: number): Promise<number>;
  /** Deletes the container from the runtime (force kills a running one). */
  delete(id: string): Promise<void>;
  /**
   * Freezes the container on purpose (fencing, `haven pause`): it stays
   * frozen until {@link resume}, whatever checkpoint freezes and thaws it meanwhile.
   */
  pause(id: string): Promise<void>;
  /** Thaws a container paused on purpose (or frozen by a checkpoint). */
  resume(id: string): Promise<void>;
  /** Thaws a container a checkpoint left frozen, unless it is paused on purpose (see {@link pause}). */
  thaw(id: string): Promise<void>;
  checkpoint(id: string, options: CheckpointOptions): Promise<CheckpointResult>;
  /** Post-copy's dump (optional: a runtime without lazy pages leaves it out). */
  checkpointLazy?(id: string, options: CheckpointOptions, listen: LazyListen): Promise<LazyCheckpoint>;
  /** Post-copy's destination daemon, started before a `lazyPages` restore with the same work dir. */
  lazyPagesDaemon?(options: {
    imageDir: string;
    workDir: string;
    address: string;
    port: number;
  }): LazyPagesDaemon;
  /** Whether CRIU can track dirty pages (soft-dirty) and serve lazy pages (userfaultfd) here. */
  abilities?(): Promise<{ dirtyTracking: boolean; lazyPages: boolean }>;
  /** Bytes of memory the container uses now (its cgroup's count), or undefined if unknown. */
  memoryUsage(id: string): Promise<number | undefined>;
  restore(id: string, options: RestoreOptions): Promise<RestoreResult>;
  /**
   * Finds a container that kept running while its manager was down (an agent
   * restart is not a container crash), or undefined if it is gone.
   */
  adopt(id: string): Promise<RuntimeStatus | undefined>;
}

/**
 * Where a post-copy dump serves the pages it leaves out: CRIU's lazy page
 * server listens on `address:port` in the network namespace `netnsPath`
 * (the host's, not the container's: the destination must reach it).
 */
export interface LazyListen {
  address: string;
  port: number;
  netnsPath: string;
  /**
   * Called once the container is frozen and its network locked — nothing
   * leaves it from then on (a migration's destination may announce itself).
   */
  onLocked?: () => void;
}

/**
 * A post-copy dump in flight (`criu dump --lazy-pages --leave-running`
 * inside the freeze chain). The container stays frozen and locked
 * throughout, whatever happens: the caller decides — kill it once the
 * destination holds every page, or thaw it (rollback) once the destination
 * copy is gone.
 */
export interface LazyCheckpoint {
  /**
   * Resolves once the images without the lazy pages and the container's
   * files are written (the destination may restore now); rejects if the
   * dump failed before that (the chain then thawed nothing: see `done`).
   * `frozenAt`: the freeze's start (epoch ms); `readyMs`: from then to the images.
   */
  ready: Promise<{ frozenAt: number; readyMs: number }>;
  /**
   * Resolves when CRIU has exited — every page served (code 0) or the
   * transfer failed (non-zero) — with its error lines.
   */
  done: Promise<{ code: number; errors: string[]; stats: DumpStats | undefined }>;
  /** Kills the chain (CRIU lets go of the tasks; they stay frozen). */
  abort(): void;
}

/** A lazy-pages daemon on a post-copy destination (`criu lazy-pages --page-server`). */
export interface LazyPagesDaemon {
  /**
   * Resolves when it exits: `complete` if every page reached the restored
   * processes (that did not exit or unmap it meanwhile), otherwise why not;
   * `transferred` sums its per-process counts, for the record.
   */
  exited: Promise<{ complete: boolean; code: number; transferred?: [number, number]; errors: string[] }>;
  /** Pages received so far and in all, from its log (undefined before it knows). */
  progress(): Promise<[number, number] | undefined>;
  kill(): void;
}
