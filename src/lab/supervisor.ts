/**
 * The lab's supervisor: what systemd's `Restart=always` would be on real
 * hosts. It runs the controller, each host's agent and the dashboard's
 * loopback forwarder (forward.ts), restarts whichever exits, and writes
 * what it runs to status.json.
 *
 *              spawn                    exit (host not killed)
 *   waiting ─────────► running ──────────────────────────────► waiting
 *      ▲                  │          after backoff: 200 ms, doubling to 2 s;
 *      │ SIGHUP: host up  │ exit (host killed in lab.json)     back to 200 ms after 10 s up
 *      └──── idle ◄───────┘
 *
 * Signals: SIGHUP re-reads lab.json (starts agents of hosts that came back,
 * SIGKILLs those of hosts now killed); SIGTERM stops every child (SIGTERM,
 * then SIGKILL after 3 s) and exits.
 *
 * Each child starts as `sh`, which moves itself into its cgroup and then
 * execs `nsenter … node …`: the PID the supervisor knows is the agent's, and
 * everything the agent starts (shims, runc, containers) stays in the host's
 * cgroup tree, where `kill-host` and `down` find it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT } from '../core/config.js';
import { netnsPath } from '../runtime/network.js';
import { cgroupProcsFiles, ensureCgroup, inCgroupTree, isAlive } from './cgroups.js';
import { ETCD_BIN, etcdArgs, type EtcdMember } from './etcd.js';
import {
  AGENT_PORT,
  BRIDGE_NETNS,
  CONTROLLER_ADDRESS,
  CONTROLLER_NETNS,
  CONTROLLER_PORT,
  CONTROLLER_URL,
  ETCD_CLIENT_PORT,
  ETCD_MEMBERS,
  ETCD_PEER_PORT,
  controllerAddress,
  controllerUrl,
  DASHBOARD_PORT,
  HOST_VIEW,
  LAB_CGROUP,
  LAB_PATHS,
  hostAddress,
  hostCgroup,
  hostLog,
  hostMountNs,
  hostNetns,
} from './paths.js';
import {
  readLabSpec,
  readSupervisorStatus,
  readToken,
  writeSupervisorStatus,
  type LabSpec,
  type ProcessStatus,
} from './state.js';
import { HOST_TLS_VIEW, LAB_CONTROLLER_TLS, labScheme, placeHostTls } from './tls.js';

const BACKOFF_MIN_MS = 200;
const BACKOFF_MAX_MS = 2_000;
/** A child that ran this long is healthy again: its next restart waits the minimum. */
const BACKOFF_RESET_AFTER_MS = 10_000;
const STOP_GRACE_MS = 3_000;

/** The haven CLI the children run. */
export const CLI_MAIN = join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');

/** Environment variables that configure a haven process: never inherited by the lab's children. */
const HAVEN_VARIABLES = /^HAVEN_(TOKEN|NETNS|STATE_DIR|RUNC_ROOT|HOST|SUBNET|LAB_.*)$/;

/** The environment without Haven's per-process settings (the lab sets its own). */
export function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([key]) => !HAVEN_VARIABLES.test(key)));
}

/** How to start one supervised process. */
interface Program {
  argv: string[];
  env: NodeJS.ProcessEnv;
  cgroup: string;
  log: string;
}

/** One supervised process and its restart bookkeeping. */
interface Entry {
  key: string;
  child: ChildProcess | undefined;
  timer: NodeJS.Timeout | undefined;
  startedAt: number;
  backoffMs: number;
  starts: number;
  lastExit: string | null;
}

/** The controller's command line (see docs/ARCHITECTURE.md, "The lab"). */
export function controllerProgram(token: string, tls = false): Program {
  return {
    argv: [
      'nsenter',
      `--net=${netnsPath(CONTROLLER_NETNS)}`,
      '--',
      process.execPath,
      CLI_MAIN,
      'controller',
      '--listen',
      `${CONTROLLER_ADDRESS}:${CONTROLLER_PORT}`,
      '--socket',
      LAB_PATHS.controllerSocket,
      '--state-dir',
      LAB_PATHS.controllerState,
      ...(tls ? ['--tls-dir', LAB_CONTROLLER_TLS] : []),
    ],
    env: { ...cleanEnv(), HAVEN_TOKEN: token },
    cgroup: `${LAB_CGROUP}/controller`,
    log: join(LAB_PATHS.logsDir, 'controller.log'),
  };
}

/** The lab's etcd members (`e1`…): on loopback in the controller's namespace, data under etcd/. */
export function labEtcdMembers(): EtcdMember[] {
  return Array.from({ length: ETCD_MEMBERS }, (_, i) => ({
    name: `e${i + 1}`,
    clientUrl: `http://127.0.0.1:${ETCD_CLIENT_PORT + i}`,
    peerUrl: `http://127.0.0.1:${ETCD_PEER_PORT + i}`,
    dataDir: join(LAB_PATHS.etcdDir, `e${i + 1}`),
  }));
}

/** An etcd member's command line, in the controller's namespace. */
export function etcdProgram(member: EtcdMember): Program {
  return {
    argv: [
      'nsenter',
      `--net=${netnsPath(CONTROLLER_NETNS)}`,
      '--',
      ETCD_BIN,
      ...etcdArgs(member, labEtcdMembers(), 'haven-lab'),
    ],
    env: cleanEnv(),
    cgroup: `${LAB_CGROUP}/etcd-${member.name}`,
    log: join(LAB_PATHS.logsDir, `etcd-${member.name}.log`),
  };
}

/**
 * Controller `i` of a lab on etcd: its own address and state dir, the
 * image store shared (images pushed to one leader are there for the next),
 * and the lab's socket — which only the leader binds, so the CLI always
 * reaches the leader there.
 */
export function etcdControllerProgram(token: string, i: number, tls = false): Program {
  return {
    argv: [
      'nsenter',
      `--net=${netnsPath(CONTROLLER_NETNS)}`,
      '--',
      process.execPath,
      CLI_MAIN,
      'controller',
      '--store',
      'etcd',
      '--etcd',
      labEtcdMembers()
        .map((m) => m.clientUrl)
        .join(','),
      '--listen',
      `${controllerAddress(i)}:${CONTROLLER_PORT}`,
      '--advertise',
      controllerUrl(i).replace(/^http:/, `${labScheme(tls)}:`),
      '--socket',
      LAB_PATHS.controllerSocket,
      '--state-dir',
      join(LAB_PATHS.controllerState, `c${i}`),
      '--images-dir',
      LAB_PATHS.controllerImages,
      ...(tls ? ['--tls-dir', LAB_CONTROLLER_TLS] : []),
    ],
    env: { ...cleanEnv(), HAVEN_TOKEN: token },
    cgroup: `${LAB_CGROUP}/controller-c${i}`,
    log: join(LAB_PATHS.logsDir, `controller-c${i}.log`),
  };
}

/** Every controller's API, as agents are given it: one, or all of a lab on etcd. */
export function labControllerUrls(spec: LabSpec | undefined): string {
  const scheme = `${labScheme(spec?.tls)}:`;
  if (spec?.controlPlane.store !== 'etcd') return CONTROLLER_URL.replace(/^http:/, scheme);
  return Array.from({ length: spec.controlPlane.controllers }, (_, i) =>
    controllerUrl(i + 1).replace(/^http:/, scheme),
  ).join(',');
}

/** The supervised processes of the control plane: `controller`, or `controller-c1`… and `etcd-e1`…. */
export function controlPlaneKeys(spec: LabSpec | undefined): string[] {
  if (spec?.controlPlane.store !== 'etcd') return ['controller'];
  return [
    ...labEtcdMembers().map((m) => `etcd-${m.name}`),
    ...Array.from({ length: spec.controlPlane.controllers }, (_, i) => `controller-c${i + 1}`),
  ];
}

/**
 * The dashboard's forwarder (`haven lab forward`): in the root namespace,
 * 127.0.0.1:DASHBOARD_PORT to the controller's socket; no token needed.
 */
export function forwardProgram(): Program {
  return {
    argv: [process.execPath, CLI_MAIN, 'lab', 'forward', '--port', String(DASHBOARD_PORT)],
    env: cleanEnv(),
    cgroup: `${LAB_CGROUP}/forward`,
    log: join(LAB_PATHS.logsDir, 'forward.log'),
  };
}

/** A host's agent command line: in the host's namespaces, seeing its own disk as /var/lib/haven. */
export function agentProgram(
  host: string,
  token: string,
  controllers = CONTROLLER_URL,
  tls = false,
): Program {
  const address = hostAddress(host);
  return {
    argv: [
      'nsenter',
      `--net=${netnsPath(hostNetns(host))}`,
      `--mount=${hostMountNs(host)}`,
      '--',
      process.execPath,
      CLI_MAIN,
      'agent',
      '--listen',
      `${address}:${AGENT_PORT}`,
      '--advertise',
      `${labScheme(tls)}://${address}:${AGENT_PORT}`,
      '--controller',
      controllers,
      '--host-name',
      host,
      ...(tls ? ['--tls-dir', HOST_TLS_VIEW] : []),
    ],
    env: {
      ...cleanEnv(),
      HAVEN_TOKEN: token,
      HAVEN_NETNS: BRIDGE_NETNS,
      HAVEN_STATE_DIR: HOST_VIEW.stateDir,
      HAVEN_RUNC_ROOT: HOST_VIEW.runcRoot,
    },
    cgroup: `${hostCgroup(host)}/agent`,
    log: hostLog(host),
  };
}

/**
 * The argv that runs `argv` inside cgroup `cgroup` (pids and freezer): a
 * shell joins the cgroup, then execs, so the PID stays the same.
 */
export function inCgroup(cgroup: string, argv: readonly string[]): string[] {
  const [pids, freezer] = cgroupProcsFiles(cgroup);
  return [
    'sh',
    '-c',
    'echo $$ > "$1" && echo $$ > "$2" && shift 2 && exec "$@"',
    'haven-lab',
    pids ?? '',
    freezer ?? '',
    ...argv,
  ];
}

function log(message: string): void {
  process.stdout.write(`${new Date().toISOString()} ${message}\n`);
}

/**
 * Runs the supervisor until SIGTERM (or until the lab is gone). The process
 * running this should be detached (own session), with stdout to
 * logs/supervisor.log. Resolves with the exit code.
 */
export async function runSupervisor(): Promise<number> {
  const token = readToken();
  const entries = new Map<string, Entry>();
  let spec: LabSpec | undefined = readLabSpec();
  /** 0 until the first {@link apply} has started everything: `up` waits for the spec's generation. */
  let applied = 0;
  let stopping = false;
  let finish: (code: number) => void = () => undefined;
  const done = new Promise<number>((resolve) => (finish = resolve));

  ensureCgroup(`${LAB_CGROUP}/supervisor`);
  for (const file of cgroupProcsFiles(`${LAB_CGROUP}/supervisor`)) writeFileSync(file, String(process.pid));
  writeFileSync(LAB_PATHS.supervisorPid, `${process.pid}\n`);

  const programOf = (key: string): Program => {
    if (key === 'controller') return controllerProgram(token, spec?.tls);
    if (key === 'forward') return forwardProgram();
    if (key.startsWith('controller-c')) return etcdControllerProgram(token, Number(key.slice(12)), spec?.tls);
    const member = labEtcdMembers().find((m) => `etcd-${m.name}` === key);
    if (member) return etcdProgram(member);
    // A revived host's disk is new: its certificate goes back on it before its agent starts.
    if (spec?.tls) placeHostTls(key);
    return agentProgram(key, token, labControllerUrls(spec), spec?.tls);
  };

  /** Whether `key` should be running according to the newest lab.json. */
  const wanted = (key: string): boolean => {
    if (stopping || !spec) return false;
    if (key === 'forward') return true;
    if (key.startsWith('controller') || key.startsWith('etcd-')) {
      if (!controlPlaneKeys(spec).includes(key)) return false;
      return !key.startsWith('etcd-') || spec.controlPlane.etcd[key.slice(5)] !== 'killed';
    }
    const host = spec.hosts.find((h) => h.name === key);
    return host !== undefined && host.state !== 'killed';
  };

  const reload = (): void => {
    try {
      spec = readLabSpec();
    } catch (error) {
      log(`cannot read lab.json, keeping the last one: ${(error as Error).message}`);
    }
  };

  const writeStatus = (): void => {
    const view = (key: string): ProcessStatus => {
      const entry = entries.get(key);
      return {
        pid: entry?.child?.pid ?? null,
        restarts: Math.max(0, (entry?.starts ?? 0) - 1),
        lastExit: entry?.lastExit ?? null,
      };
    };
    try {
      writeSupervisorStatus({
        supervisorPid: process.pid,
        generation: applied,
        updatedAt: new Date().toISOString(),
        controller: view(spec?.controlPlane.store === 'etcd' ? 'controller-c1' : 'controller'),
        forward: view('forward'),
        hosts: Object.fromEntries((spec?.hosts ?? []).map((h) => [h.name, view(h.name)])),
        ...(spec?.controlPlane.store === 'etcd'
          ? {
              controllers: Object.fromEntries(
                controlPlaneKeys(spec)
                  .filter((k) => k.startsWith('controller-'))
                  .map((k) => [k.slice(11), view(k)]),
              ),
              etcd: Object.fromEntries(labEtcdMembers().map((m) => [m.name, view(`etcd-${m.name}`)])),
            }
          : {}),
      });
    } catch (error) {
      log(`cannot write status.json: ${(error as Error).message}`);
    }
  };

  const entryOf = (key: string): Entry => {
    let entry = entries.get(key);
    if (!entry) {
      entry = {
        key,
        child: undefined,
        timer: undefined,
        startedAt: 0,
        backoffMs: BACKOFF_MIN_MS,
        starts: 0,
        lastExit: null,
      };
      entries.set(key, entry);
    }
    return entry;
  };

  const scheduleRestart = (entry: Entry): void => {
    if (Date.now() - entry.startedAt >= BACKOFF_RESET_AFTER_MS) entry.backoffMs = BACKOFF_MIN_MS;
    const delay = entry.backoffMs;
    entry.backoffMs = Math.min(entry.backoffMs * 2, BACKOFF_MAX_MS);
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      reload(); // a kill-host may have landed meanwhile without our having seen its SIGHUP yet
      if (wanted(entry.key)) start(entry);
    }, delay);
    log(`${entry.key}: restarting in ${delay} ms`);
  };

  const start = (entry: Entry): void => {
    const program = programOf(entry.key);
    entry.startedAt = Date.now();
    entry.starts += 1;
    let child: ChildProcess;
    let out: number | undefined;
    try {
      ensureCgroup(program.cgroup);
      out = openSync(program.log, 'a');
      const [cmd = 'sh', ...args] = inCgroup(program.cgroup, program.argv);
      child = spawn(cmd, args, { stdio: ['ignore', out, out], env: program.env });
    } catch (error) {
      entry.lastExit = `spawn failed: ${(error as Error).message}`;
      log(`${entry.key}: ${entry.lastExit}`);
      scheduleRestart(entry);
      writeStatus();
      return;
    } finally {
      if (out !== undefined) closeSync(out);
    }
    entry.child = child;
    child.once('error', (error) => log(`${entry.key}: ${error.message}`));
    child.once('exit', (code, signal) => {
      entry.child = undefined;
      entry.lastExit = signal ?? `exit ${code ?? '?'}`;
      log(`${entry.key}: pid ${child.pid ?? '?'} ended (${entry.lastExit})`);
      if (stopping) {
        if ([...entries.values()].every((e) => e.child === undefined)) exit();
        return;
      }
      reload();
      if (wanted(entry.key)) scheduleRestart(entry);
      writeStatus();
    });
    log(`${entry.key}: started pid ${child.pid ?? '?'}`);
    writeStatus();
  };

  /** Brings the running set in line with lab.json. */
  const apply = (): void => {
    if (!spec) return;
    // etcd members first: controllers campaign on them, agents register with controllers.
    for (const key of [...controlPlaneKeys(spec), 'forward', ...spec.hosts.map((h) => h.name)]) {
      const entry = entryOf(key);
      if (wanted(key)) {
        if (!entry.child && !entry.timer) {
          entry.backoffMs = BACKOFF_MIN_MS;
          start(entry);
        }
      } else {
        if (entry.timer) clearTimeout(entry.timer);
        entry.timer = undefined;
        entry.child?.kill('SIGKILL');
      }
    }
    applied = spec.generation;
    writeStatus();
  };

  // A lab torn down without telling us (its state dir removed) must not leave us running.
  const watch = setInterval(() => {
    if (!existsSync(LAB_PATHS.labJson)) stop('lab.json is gone');
  }, 2_000);
  const exit = (): void => {
    clearInterval(watch);
    writeStatus();
    rmSync(LAB_PATHS.supervisorPid, { force: true });
    log('supervisor stopped');
    finish(0);
  };

  const stop = (why: string): void => {
    if (stopping) return;
    stopping = true;
    log(`stopping (${why})`);
    for (const entry of entries.values()) {
      if (entry.timer) clearTimeout(entry.timer);
      entry.timer = undefined;
      entry.child?.kill('SIGTERM');
    }
    if ([...entries.values()].every((e) => e.child === undefined)) return exit();
    setTimeout(() => {
      for (const entry of entries.values()) entry.child?.kill('SIGKILL');
    }, STOP_GRACE_MS).unref();
  };

  process.on('SIGHUP', () => {
    log('SIGHUP: re-reading lab.json');
    reload();
    apply();
  });
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));

  log(`supervisor pid ${process.pid} started`);
  await killOrphans();
  apply();
  return done;
}

/**
 * Ends the children of an earlier supervisor that died without stopping
 * them (they hold the ports the new ones need). Only the PIDs it reported,
 * and only while they are still in their own cgroups: never a stranger that
 * reused a PID, and never an agent's shims (containers outlive agents).
 */
async function killOrphans(): Promise<void> {
  const previous = readSupervisorStatus();
  if (!previous || previous.supervisorPid === process.pid) return;
  const killed: number[] = [];
  const candidates: [number | null, string][] = [
    [previous.controller.pid, `${LAB_CGROUP}/controller`],
    [previous.forward?.pid ?? null, `${LAB_CGROUP}/forward`],
    ...Object.entries(previous.controllers ?? {}).map(([c, p]): [number | null, string] => [
      p.pid,
      `${LAB_CGROUP}/controller-${c}`,
    ]),
    ...Object.entries(previous.etcd ?? {}).map(([e, p]): [number | null, string] => [
      p.pid,
      `${LAB_CGROUP}/etcd-${e}`,
    ]),
    ...Object.entries(previous.hosts).map(([host, p]): [number | null, string] => [
      p.pid,
      `${hostCgroup(host)}/agent`,
    ]),
  ];
  for (const [pid, cgroup] of candidates) {
    if (pid !== null && isAlive(pid) && inCgroupTree(pid, cgroup)) {
      log(`ending pid ${pid}, left in ${cgroup} by an earlier supervisor`);
      process.kill(pid, 'SIGKILL');
      killed.push(pid);
    }
  }
  // Their ports must be free before the new ones start.
  const deadline = Date.now() + 2_000;
  while (killed.some(isAlive) && Date.now() < deadline) await sleep(10);
}
