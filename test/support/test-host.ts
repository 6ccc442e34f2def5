/**
 * A throw-away Haven host for integration tests: its own state directory,
 * runc root, host name and bridge namespace, plus a `client` namespace on the
 * same bridge (at 10.88.255.x) from which real clients connect. `dispose()`
 * removes every container, namespace, mount and directory it made.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { compileHostConfig, REPO_ROOT, type HostConfig } from '../../src/core/config.js';
import { run, type ExecResult } from '../../src/core/exec.js';
import { ContainerHost } from '../../src/host/container-host.js';
import { redisImage, REDIS_ARGS } from '../../src/fixtures/images.js';
import { createContainerNetwork, deleteNamespace, shortHash } from '../../src/runtime/network.js';

/** A test host and its client namespace. */
export class TestHost {
  readonly clientNetns: string;
  readonly clientIp = '10.88.255.10';
  private readonly extra: string[] = [];

  private constructor(
    readonly config: HostConfig,
    readonly host: ContainerHost,
    readonly root: string,
  ) {
    this.clientNetns = `hvt-${shortHash(config.hostName).slice(0, 6)}-client`;
  }

  /** Makes a host named `label` with a fresh state dir and its own network. */
  static async create(label: string, options: { networkNamespace?: string } = {}): Promise<TestHost> {
    const root = await mkdtemp(join(tmpdir(), `haven-${label}-`));
    const hostName = `t-${label}-${process.pid}`;
    const config = compileHostConfig({
      hostName,
      stateDir: join(root, 'state'),
      runcRoot: join(root, 'runc'),
      networkNamespace: options.networkNamespace ?? `hvt-${shortHash(hostName).slice(0, 6)}-net`,
    });
    return new TestHost(config, new ContainerHost(config), root);
  }

  /** Another host on the same network (as a second machine on one LAN). */
  async sibling(label: string): Promise<TestHost> {
    const other = await TestHost.create(label, { networkNamespace: this.config.networkNamespace });
    this.extra.push(other.root);
    return other;
  }

  /** Attaches the client namespace to this host's bridge. */
  async startClient(): Promise<void> {
    if (existsSync(`/run/netns/${this.clientNetns}`)) return;
    await createContainerNetwork(this.config, {
      netns: this.clientNetns,
      address: this.clientIp,
      prefix: 16,
      mac: '02:48:0a:58:ff:0a',
    });
  }

  /** Runs a command inside the client namespace. */
  inClient(argv: string[], input?: string): Promise<ExecResult> {
    return run(['nsenter', `--net=/run/netns/${this.clientNetns}`, ...argv], {
      ...(input !== undefined ? { input } : {}),
      timeoutMs: 120_000,
    });
  }

  /** Runs the real `haven` CLI against this host; never throws on a non-zero exit. */
  cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<ExecResult> {
    return run([join(REPO_ROOT, 'bin', 'haven'), ...args], {
      allowFailure: true,
      timeoutMs: 180_000,
      env: {
        ...process.env,
        ...env,
        HAVEN_STATE_DIR: this.config.stateDir,
        HAVEN_RUNC_ROOT: this.config.runcRoot,
        HAVEN_HOST: this.config.hostName,
        HAVEN_NETNS: this.config.networkNamespace,
      },
    });
  }

  /** Runs Redis (the fixture image) through the CLI at `ip`, with extra `run` flags, and waits until it answers. */
  async runRedis(name: string, ip: string, flags: readonly string[] = []): Promise<void> {
    const ran = await this.cli([
      'run',
      name,
      '--image',
      await redisImage(),
      '--ip',
      `${ip}/16`,
      ...flags,
      '--',
      ...REDIS_ARGS,
    ]);
    if (ran.code !== 0) throw new Error(`haven run ${name} failed: ${ran.stderr}`);
    await this.waitForRedis(ip);
  }

  /** Waits until Redis at `ip` answers PING from the client namespace. */
  async waitForRedis(ip: string): Promise<void> {
    for (let i = 0; i < 100; i++) {
      const r = await this.inClient(['redis-cli', '-h', ip, 'PING']).catch(() => undefined);
      if (r?.stdout.trim() === 'PONG') return;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    throw new Error(`redis at ${ip} did not answer`);
  }

  /** Opens one long-lived Redis connection from the client namespace. */
  redisSession(ip: string): RedisSession {
    return new RedisSession(
      spawn('nsenter', [
        `--net=/run/netns/${this.clientNetns}`,
        process.execPath,
        join(REPO_ROOT, 'fixtures', 'clients', 'resp-session.mjs'),
        ip,
        '6379',
      ]),
    );
  }

  /** Removes everything this host made. */
  async dispose(): Promise<void> {
    for (const view of await this.host.list().catch(() => [])) {
      await this.host.remove(view.name, { force: true }).catch(() => undefined);
    }
    await this.host.unmountStaging().catch(() => undefined);
    await deleteNamespace(this.clientNetns);
    await deleteNamespace(this.config.networkNamespace);
    // Safety net for a test that failed half-way: nothing of ours stays mounted.
    const mounts = (await readFile('/proc/self/mounts', 'utf8'))
      .split('\n')
      .map((l) => l.split(' ')[1] ?? '');
    for (const mount of mounts.filter((m) => m.startsWith(`${this.root}/`)).reverse()) {
      await run(['umount', '-l', mount], { allowFailure: true });
    }
    await rm(this.root, { recursive: true, force: true });
  }
}

/** A line-driven Redis connection (fixtures/clients/resp-session.mjs). */
export class RedisSession {
  private readonly lines: string[] = [];
  private waiters: Array<() => void> = [];

  constructor(private readonly child: ChildProcessWithoutNullStreams) {
    createInterface({ input: child.stdout }).on('line', (line) => {
      this.lines.push(line);
      for (const w of this.waiters.splice(0)) w();
    });
  }

  /** Next JSON line from the client, or throws after `timeoutMs`. */
  async next(timeoutMs = 10_000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    while (this.lines.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('no reply from the Redis session in time');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return JSON.parse(this.lines.shift() ?? '{}') as Record<string, unknown>;
  }

  /** Sends one command and returns its parsed reply line. */
  async command(line: string, timeoutMs = 10_000): Promise<Record<string, unknown>> {
    this.child.stdin.write(`${line}\n`);
    return this.next(timeoutMs);
  }

  close(): void {
    this.child.stdin.end();
    this.child.kill();
  }
}
