import { InvalidArgumentError } from '../../core/errors.js';
import { parseEnv, parseMemorySize } from '../../core/names.js';
import { parseVolumeFlag } from '../../host/container-host.js';
import type { ClusterContainerView } from '../../controller/controller.js';
import { printJson, requireName, type Command } from '../command.js';

const usage =
  'haven run NAME --image IMG [--volume V:/path]... [--ip ADDR/PREFIX] [--memory 512m] [--env K=V]...\n' +
  '          [--host H] [--cpu MILLIS] [--label-require K=V]... [--with NAME]... [--apart NAME]...\n' +
  '          [--ha none|restart|checkpoint [--interval 1s]]\n' +
  "          [--probe-exec 'CMD' | --probe-tcp PORT | --probe-http PORT/PATH] [--probe-period 1s] [--probe-timeout 1s]\n" +
  '          [--probe-failures 3] [--probe-delay 0s] [--json] -- CMD ARGS...';

/** The `probe` field of a run request from `--probe-*` flags (Kubernetes' field names), or nothing. */
export function probeFromFlags(values: Record<string, unknown>): { probe?: Record<string, unknown> } {
  const text = (flag: string): string | undefined =>
    typeof values[flag] === 'string' ? values[flag] : undefined;
  const exec = text('probe-exec');
  const tcp = text('probe-tcp');
  const http = text('probe-http');
  if (exec === undefined && tcp === undefined && http === undefined) return {};
  const seconds = (flag: string): number | undefined => {
    const value = text(flag);
    return value === undefined ? undefined : parseDuration(value) / 1000;
  };
  const probe: Record<string, unknown> = {};
  if (exec !== undefined) probe.exec = { command: ['sh', '-c', exec] };
  if (tcp !== undefined) probe.tcpSocket = { port: Number(tcp) };
  if (http !== undefined) {
    const match = /^(\d+)(\/.*)$/.exec(http);
    if (!match)
      throw new InvalidArgumentError(`invalid --probe-http "${http}": expected PORT/PATH, e.g. 8080/healthz`);
    probe.httpGet = { port: Number(match[1]), path: match[2] };
  }
  const period = seconds('probe-period');
  const timeout = seconds('probe-timeout');
  const delay = seconds('probe-delay');
  const failures = text('probe-failures');
  if (period !== undefined) probe.periodSeconds = period;
  if (timeout !== undefined) probe.timeoutSeconds = timeout;
  if (delay !== undefined) probe.initialDelaySeconds = delay;
  if (failures !== undefined) probe.failureThreshold = Number(failures);
  return { probe };
}

/** `500ms`, `1s`, `1.5s`, `2m` → milliseconds. */
export function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m)$/.exec(text);
  if (!match) throw new InvalidArgumentError(`invalid duration "${text}": e.g. 500ms, 1s, 2m`);
  const value = Number(match[1]) * (match[2] === 'ms' ? 1 : match[2] === 's' ? 1000 : 60_000);
  return Math.round(value);
}

/** `haven run`: create and start a container. */
export const runCommand: Command = {
  name: 'run',
  summary: 'create and start a container',
  usage,
  options: {
    image: { type: 'string' },
    volume: { type: 'string', multiple: true },
    ip: { type: 'string' },
    memory: { type: 'string' },
    env: { type: 'string', multiple: true },
    json: { type: 'boolean' },
    host: { type: 'string' },
    cpu: { type: 'string' },
    'label-require': { type: 'string', multiple: true },
    with: { type: 'string', multiple: true },
    apart: { type: 'string', multiple: true },
    ha: { type: 'string' },
    interval: { type: 'string' },
    'probe-exec': { type: 'string' },
    'probe-tcp': { type: 'string' },
    'probe-http': { type: 'string' },
    'probe-period': { type: 'string' },
    'probe-timeout': { type: 'string' },
    'probe-failures': { type: 'string' },
    'probe-delay': { type: 'string' },
  },
  async run(inv) {
    const name = requireName(inv, usage);
    const image = inv.values.image;
    if (typeof image !== 'string') throw new InvalidArgumentError(`--image is required\nusage: ${usage}`);
    const volumes = ((inv.values.volume as string[] | undefined) ?? []).map(parseVolumeFlag);
    const env = parseEnv((inv.values.env as string[] | undefined) ?? []);
    const memory = typeof inv.values.memory === 'string' ? parseMemorySize(inv.values.memory) : undefined;
    const cluster = inv.cluster();
    if (cluster) {
      const cpu = typeof inv.values.cpu === 'string' ? Number(inv.values.cpu) : undefined;
      if (cpu !== undefined && (!Number.isInteger(cpu) || cpu < 1)) {
        throw new InvalidArgumentError(`invalid --cpu "${String(inv.values.cpu)}": millicores, e.g. 500`);
      }
      const labels = Object.fromEntries(
        ((inv.values['label-require'] as string[] | undefined) ?? []).map((pair) => {
          const at = pair.indexOf('=');
          if (at <= 0)
            throw new InvalidArgumentError(`invalid --label-require "${pair}": expected KEY=VALUE`);
          return [pair.slice(0, at), pair.slice(at + 1)];
        }),
      );
      const placed = await cluster.call<ClusterContainerView>('/v1/containers', {
        method: 'POST',
        timeoutMs: 600_000,
        body: {
          name,
          image: await cluster.imageRef(image),
          args: inv.rest,
          env,
          volumes,
          ...(typeof inv.values.ip === 'string' ? { ip: inv.values.ip } : {}),
          ...(memory ? { memoryBytes: memory } : {}),
          ...(typeof inv.values.host === 'string' ? { host: inv.values.host } : {}),
          ...(cpu ? { cpuMillis: cpu } : {}),
          ...(Object.keys(labels).length > 0 ? { requireHostLabels: labels } : {}),
          ...(inv.values.with ? { with: inv.values.with } : {}),
          ...(inv.values.apart ? { apart: inv.values.apart } : {}),
          ...(typeof inv.values.ha === 'string' ? { ha: inv.values.ha } : {}),
          ...probeFromFlags(inv.values),
          ...(typeof inv.values.interval === 'string'
            ? { intervalMs: parseDuration(inv.values.interval) }
            : {}),
        },
      });
      if (inv.values.json) printJson(placed);
      else
        process.stdout.write(
          `${placed.name} running on ${placed.host ?? '?'} at ${placed.ip} (pid ${placed.pid})\n`,
        );
      return 0;
    }
    for (const flag of [
      'host',
      'cpu',
      'label-require',
      'with',
      'apart',
      'ha',
      'interval',
      'probe-exec',
      'probe-tcp',
      'probe-http',
    ]) {
      if (inv.values[flag] !== undefined)
        throw new InvalidArgumentError(`--${flag} needs a cluster (none is running)`);
    }
    const view = await inv.host().run({
      name,
      image,
      args: inv.rest,
      env,
      volumes,
      ...(typeof inv.values.ip === 'string' ? { ip: inv.values.ip } : {}),
      ...(memory ? { memoryBytes: memory } : {}),
    });
    if (inv.values.json) printJson(view);
    else process.stdout.write(`${view.name} running on ${view.host} at ${view.ip} (pid ${view.pid})\n`);
    return 0;
  },
};
