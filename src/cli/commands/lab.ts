import { spawn } from 'node:child_process';
import { constants } from 'node:os';
import { InvalidArgumentError } from '../../core/errors.js';
import {
  checkHostCount,
  labDashboardLogin,
  labDown,
  labExecArgv,
  labHeal,
  labKillHost,
  labPartition,
  labRevive,
  labSetEtcdMember,
  labShape,
  labStatus,
  labUp,
  labWaitReady,
  LAB_PATHS,
  DASHBOARD_PORT,
  type LabStatus,
} from '../../lab/index.js';
import { runForwarder } from '../../lab/forward.js';
import { runSupervisor } from '../../lab/supervisor.js';
import { printJson, type Command, type Invocation } from '../command.js';

const usage = [
  'haven lab up [--hosts N] [--store sqlite|etcd] [--controllers N] [--tls] | down | status [--json]',
  '       haven lab kill-etcd E | revive-etcd E       (a lab on etcd: members e1, e2, e3)',
  '       haven lab kill-host H | revive H',
  '       haven lab partition H [--keep-client] | partition controller | heal H|controller',
  '       haven lab shape H [--rate RATE|off] [--loss PERCENT|off]',
  '       haven lab exec H|client|controller -- CMD...',
  '       (status --json: `dashboard` is a one-time login URL of the dashboard; haven dashboard makes more)',
].join('\n');

/** `haven lab`: several Haven hosts on one machine, with faults on demand. */
export const labCommand: Command = {
  name: 'lab',
  summary: 'run several Haven hosts on this machine, and break them (kill, partition, shape)',
  usage,
  options: {
    hosts: { type: 'string' },
    json: { type: 'boolean' },
    'keep-client': { type: 'boolean' },
    rate: { type: 'string' },
    loss: { type: 'string' },
    port: { type: 'string' },
    store: { type: 'string' },
    controllers: { type: 'string' },
    tls: { type: 'boolean' },
  },
  async run(inv) {
    const [sub, ...args] = inv.positionals;
    switch (sub) {
      case 'up': {
        noArgs(args);
        const count = checkHostCount(Number(typeof inv.values.hosts === 'string' ? inv.values.hosts : '3'));
        const store = typeof inv.values.store === 'string' ? inv.values.store : 'sqlite';
        if (store !== 'sqlite' && store !== 'etcd')
          throw new InvalidArgumentError(`--store must be sqlite or etcd, not "${store}"`);
        const controllers = Number(
          typeof inv.values.controllers === 'string' ? inv.values.controllers : store === 'etcd' ? '3' : '1',
        );
        const made = await labUp(count, undefined, { store, controllers }, { tls: inv.values.tls === true });
        // Returns once the cluster serves: the next command must find it.
        await labWaitReady();
        const status = labStatus();
        if (!made) process.stdout.write(`lab already up with ${count} hosts\n`);
        if (status.up) printTable(status);
        return 0;
      }
      case 'down': {
        noArgs(args);
        const left = await labDown();
        if (left.length > 0) {
          process.stderr.write(`haven: lab down left:\n  ${left.join('\n  ')}\n`);
          return 70;
        }
        process.stdout.write('lab down\n');
        return 0;
      }
      case 'status': {
        noArgs(args);
        const status = labStatus();
        if (inv.values.json)
          printJson(status.up ? { ...status, dashboard: await labDashboardLogin() } : status);
        else if (status.up) printTable(status);
        else process.stdout.write('no lab is up\n');
        return 0;
      }
      case 'kill-host':
        await labKillHost(one(args, 'H'));
        return 0;
      case 'revive': {
        const host = one(args, 'H');
        if (!(await labRevive(host))) process.stdout.write(`host ${host} is not killed: nothing to revive\n`);
        return 0;
      }
      case 'kill-etcd':
        await labSetEtcdMember(one(args, 'E'), 'killed');
        return 0;
      case 'revive-etcd':
        await labSetEtcdMember(one(args, 'E'), 'up');
        return 0;
      case 'partition':
        await labPartition(one(args, 'H|controller'), inv.values['keep-client'] === true);
        return 0;
      case 'heal':
        await labHeal(one(args, 'H|controller'));
        return 0;
      case 'shape': {
        const { rate, loss } = inv.values;
        if (typeof rate !== 'string' && typeof loss !== 'string')
          throw new InvalidArgumentError(`--rate or --loss is required\nusage: ${usage}`);
        await labShape(one(args, 'H'), {
          ...(typeof rate === 'string' ? { rate } : {}),
          ...(typeof loss === 'string' ? { loss } : {}),
        });
        return 0;
      }
      case 'exec':
        return execIn(one(args, 'H|client|controller'), inv);
      case 'supervise': // internal: what `up` starts, detached
        noArgs(args);
        return runSupervisor();
      case 'forward': {
        // internal: what the supervisor runs for the dashboard (src/lab/forward.ts)
        noArgs(args);
        const port = Number(typeof inv.values.port === 'string' ? inv.values.port : DASHBOARD_PORT);
        if (!Number.isInteger(port) || port < 1 || port > 65_535)
          throw new InvalidArgumentError(`--port must be a TCP port, not ${String(inv.values.port)}`);
        return runForwarder(port, LAB_PATHS.controllerSocket);
      }
      default:
        throw new InvalidArgumentError(
          `${sub === undefined ? 'a subcommand is required' : `unknown subcommand "${sub}"`}\nusage: ${usage}`,
        );
    }
  },
};

function noArgs(args: string[]): void {
  if (args.length > 0)
    throw new InvalidArgumentError(`unexpected arguments: ${args.join(' ')}\nusage: ${usage}`);
}

function one(args: string[], what: string): string {
  const [value, ...extra] = args;
  if (value === undefined) throw new InvalidArgumentError(`${what} is required\nusage: ${usage}`);
  noArgs(extra);
  return value;
}

/**
 * Runs the command after `--` in a lab namespace with the terminal's stdio
 * (not through `run()`, which captures output), and passes its exit status
 * through: a signal's death becomes 128 + the signal number, as in a shell.
 */
function execIn(target: string, inv: Invocation): Promise<number> {
  const [cmd = 'sh', ...args] = labExecArgv(target, inv.rest);
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: 'inherit' });
    const forward = (signal: NodeJS.Signals): void => void child.kill(signal);
    process.on('SIGINT', forward);
    process.on('SIGTERM', forward);
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      process.off('SIGINT', forward);
      process.off('SIGTERM', forward);
      resolve(code ?? 128 + (signal ? constants.signals[signal] : 0));
    });
  });
}

function printTable(status: LabStatus): void {
  const pid = (p: number | null): string => (p === null ? '-' : String(p));
  const rows: string[][] = [
    ['NAME', 'NAMESPACE', 'ADDRESS', 'STATE', 'PID', 'SHAPED'],
    [
      'controller',
      status.controller.namespace,
      status.controller.url,
      status.controller.state,
      pid(status.controller.pid),
      '-',
    ],
    ...(status.controllers ?? []).map((c) => [
      `controller ${c.name}`,
      status.controller.namespace,
      c.url,
      'up',
      pid(c.pid),
      '-',
    ]),
    ...(status.etcd ?? []).map((e) => [
      `etcd ${e.name}`,
      status.controller.namespace,
      e.url,
      e.state,
      pid(e.pid),
      '-',
    ]),
    ['client', status.client.namespace, status.client.address, '-', '-', '-'],
    ...status.hosts.map((h) => [
      h.name,
      h.namespace,
      h.address,
      h.state,
      pid(h.agentPid),
      [h.shapedRate, h.lossPercent === null ? null : `${h.lossPercent}% loss`].filter(Boolean).join(', ') ||
        '-',
    ]),
  ];
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  for (const row of rows) {
    process.stdout.write(
      `${row
        .map((cell, i) => cell.padEnd(widths[i] ?? 0))
        .join('  ')
        .trimEnd()}\n`,
    );
  }
  process.stdout.write(
    `\ncontroller socket ${status.controller.socket}; token ${status.token}; ` +
      `supervisor ${status.supervisorPid === null ? 'not running' : `pid ${status.supervisorPid}`}; ` +
      `logs ${LAB_PATHS.logsDir}\n` +
      `dashboard ${status.forward.url}/ui/ (haven dashboard prints a login URL)\n`,
  );
}
