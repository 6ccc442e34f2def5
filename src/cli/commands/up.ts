/**
 * Haven on one machine, no lab: `haven init` makes the cluster token,
 * `haven up` starts a controller (embedded store) and one agent as
 * background services, `haven down` stops them (containers keep running
 * under their shims, as they do when an agent restarts).
 *
 *   controller  127.0.0.1:7070 and /run/haven/controller.sock, state /var/lib/haven/controller
 *   agent       127.0.0.1:7071, state /var/lib/haven (the single-host layout)
 *   logs        /var/log/haven/{controller,agent}.log; PIDs in /run/haven/{controller,agent}.pid
 *
 * Under systemd, run the same two commands as units instead (see the README).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, openSync, readFileSync } from 'node:fs';
import { chmod, mkdir, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT } from '../../core/config.js';
import { HavenError } from '../../core/errors.js';
import { callJson } from '../../core/http-client.js';
import type { HostView } from '../../controller/controller.js';
import { CLUSTER_PATHS } from '../cluster-client.js';
import type { Command } from '../command.js';

const LOG_DIR = '/var/log/haven';
const RUN_DIR = '/run/haven';
const CONTROLLER_URL = 'http://127.0.0.1:7070';

/** Makes the cluster token if there is none; returns it (`haven init`, `haven up`). */
export async function ensureToken(force = false): Promise<{ token: string; made: boolean }> {
  if (!force && existsSync(CLUSTER_PATHS.localToken)) {
    return { token: readFileSync(CLUSTER_PATHS.localToken, 'utf8').trim(), made: false };
  }
  await mkdir('/var/lib/haven', { recursive: true });
  const token = randomBytes(32).toString('hex');
  await writeFile(CLUSTER_PATHS.localToken, `${token}\n`, { mode: 0o600 });
  await chmod(CLUSTER_PATHS.localToken, 0o600);
  return { token, made: true };
}

function pidOf(service: string): number | undefined {
  try {
    const pid = Number(readFileSync(`${RUN_DIR}/${service}.pid`, 'utf8').trim());
    if (!Number.isInteger(pid) || pid <= 1) return undefined;
    process.kill(pid, 0);
    // Only ours: the process must be a haven command of this service.
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return cmdline.includes(service) && cmdline.some((a) => a.endsWith('main.js')) ? pid : undefined;
  } catch {
    return undefined;
  }
}

async function startService(service: 'controller' | 'agent', args: string[], token: string): Promise<number> {
  const running = pidOf(service);
  if (running) return running;
  await mkdir(LOG_DIR, { recursive: true });
  await mkdir(RUN_DIR, { recursive: true });
  const log = openSync(`${LOG_DIR}/${service}.log`, 'a');
  const env: NodeJS.ProcessEnv = { ...process.env, HAVEN_TOKEN: token };
  for (const key of ['HAVEN_CONTROLLER', 'HAVEN_STATE_DIR', 'HAVEN_RUNC_ROOT', 'HAVEN_LOCAL'])
    delete env[key];
  const child = spawn(process.execPath, [`${REPO_ROOT}/dist/src/cli/main.js`, service, ...args], {
    detached: true,
    stdio: ['ignore', log, log],
    env,
  });
  child.unref();
  if (!child.pid) throw new HavenError(`could not start the ${service}`, 'unavailable');
  await writeFile(`${RUN_DIR}/${service}.pid`, `${child.pid}\n`);
  return child.pid;
}

/** `haven up`: a one-host cluster on this machine, as background services. */
export const upCommand: Command = {
  name: 'up',
  summary: 'start a one-machine cluster (controller + agent) in the background',
  usage: 'haven up [--timeout SECONDS]',
  options: { timeout: { type: 'string' } },
  async run(inv) {
    const { token } = await ensureToken();
    const timeoutMs = (typeof inv.values.timeout === 'string' ? Number(inv.values.timeout) : 30) * 1000;
    const controllerPid = await startService(
      'controller',
      [
        '--listen',
        '127.0.0.1:7070',
        '--socket',
        CLUSTER_PATHS.localSocket,
        '--state-dir',
        '/var/lib/haven/controller',
      ],
      token,
    );
    const agentPid = await startService(
      'agent',
      ['--listen', '127.0.0.1:7071', '--controller', CONTROLLER_URL, '--advertise', 'http://127.0.0.1:7071'],
      token,
    );
    const name = process.env.HAVEN_HOST ?? hostname();
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hosts = await callJson<HostView[]>(CONTROLLER_URL, '/v1/hosts', token, { timeoutMs: 2000 }).catch(
        () => [],
      );
      if (hosts.some((h) => h.name === name && h.state === 'up')) break;
      if (Date.now() > deadline) {
        throw new HavenError(
          `the cluster did not come up within ${timeoutMs / 1000} s: see ${LOG_DIR}/*.log`,
          'unavailable',
        );
      }
      await sleep(100);
    }
    process.stdout.write(
      `haven is up: controller pid ${controllerPid} (${CLUSTER_PATHS.localSocket}), agent pid ${agentPid} for host ${name}; logs in ${LOG_DIR}\n`,
    );
    return 0;
  },
};

/** `haven down`: stop the one-machine cluster's services (containers keep running). */
export const downCommand: Command = {
  name: 'down',
  summary: "stop the one-machine cluster's controller and agent (containers keep running)",
  usage: 'haven down',
  options: {},
  async run() {
    for (const service of ['agent', 'controller']) {
      const pid = pidOf(service);
      if (pid) {
        process.kill(pid, 'SIGTERM');
        for (let i = 0; i < 50 && pidOf(service); i++) await sleep(100);
        if (pidOf(service)) process.kill(pid, 'SIGKILL');
      }
      await rm(`${RUN_DIR}/${service}.pid`, { force: true });
      process.stdout.write(`${service} ${pid ? `stopped (pid ${pid})` : 'was not running'}\n`);
    }
    await rm(CLUSTER_PATHS.localSocket, { force: true });
    return 0;
  },
};
