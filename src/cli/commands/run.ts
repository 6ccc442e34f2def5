import type { ProbeSpec } from '../../agent/probes.js';
import { InvalidArgumentError } from '../../core/errors.js';
import { parseEnv, parseMemorySize } from '../../core/names.js';
import { parseVolumeFlag } from '../../host/container-host.js';
import type { ClusterContainerView } from '../../controller/controller.js';
import { printJson, type Command, type Invocation } from '../command.js';
import { loadSpecFile, mergeRunDrafts, type RunDraft } from '../spec-file.js';

const usage =
  'haven run NAME --image IMG [--volume V:/path]... [--ip ADDR/PREFIX] [--memory 512m] [--env K=V]...\n' +
  '          [--host H] [--cpu MILLIS] [--label-require K=V]... [--with NAME]... [--apart NAME]...\n' +
  '          [--ha none|restart|checkpoint [--interval 1s] | --ha continuous [--epoch 100ms] --publish PORT...]\n' +
  "          [--probe-exec 'CMD' | --probe-tcp PORT | --probe-http PORT/PATH] [--probe-period 1s] [--probe-timeout 1s]\n" +
  '          [--probe-failures 3] [--probe-delay 0s] [--watchdog 2s [--watchdog-delay 0s]] [--json] -- CMD ARGS...\n' +
  '       haven run -f|--file SPEC.yaml [NAME] [any flag above] [-- CMD ARGS...]\n' +
  '\n' +
  '  -f, --file   a container spec file (YAML, Kubernetes field names; see examples/redis.yaml).\n' +
  '               Flags given beside it override the file: each replaces the field it sets\n' +
  '               (NAME the name, -- CMD the command and args, --probe-* kind flags the probe),\n' +
  '               --env and --label-require override per key, timing flags adjust its probe.\n' +
  '  --ha continuous  Remus-style: epochs every --epoch (default 100ms), each reply held until\n' +
  '               the epoch that produced it is on the backup. Clients connect to the service\n' +
  "               address (see 'haven inspect') on each --publish port.\n" +
  '  --watchdog   the application must send sd_notify WATCHDOG=1 (to $NOTIFY_SOCKET) at least\n' +
  '               this often, else it is unhealthy like a failed probe ($WATCHDOG_USEC tells it).';

/**
 * The `probe` field of a run request from `--probe-*` flags (Kubernetes' field
 * names), or nothing without a `--probe-exec`, `--probe-tcp` or `--probe-http`.
 */
export function probeFromFlags(values: Record<string, unknown>): { probe?: Record<string, unknown> } {
  const text = (flag: string): string | undefined =>
    typeof values[flag] === 'string' ? values[flag] : undefined;
  const exec = text('probe-exec');
  const tcp = text('probe-tcp');
  const http = text('probe-http');
  if (exec === undefined && tcp === undefined && http === undefined) return {};
  const probe: Record<string, unknown> = {};
  const kinds = [exec, tcp, http].filter((k) => k !== undefined).length;
  if (kinds > 1)
    throw new InvalidArgumentError('give one of --probe-exec, --probe-tcp and --probe-http, not several');
  if (exec !== undefined) probe.exec = { command: ['sh', '-c', exec] };
  if (tcp !== undefined) probe.tcpSocket = { port: parsePort(tcp, '--probe-tcp') };
  if (http !== undefined) {
    const match = /^(\d+)(\/.*)$/.exec(http);
    if (!match)
      throw new InvalidArgumentError(`invalid --probe-http "${http}": expected PORT/PATH, e.g. 8080/healthz`);
    probe.httpGet = { port: Number(match[1]), path: match[2] };
  }
  return { probe: { ...probe, ...probeTimingFromFlags(values) } };
}

/** `--probe-period`, `--probe-timeout`, `--probe-delay`, `--probe-failures` as probe fields (those given). */
export function probeTimingFromFlags(values: Record<string, unknown>): Partial<ProbeSpec> {
  const text = (flag: string): string | undefined =>
    typeof values[flag] === 'string' ? values[flag] : undefined;
  const seconds = (flag: string): number | undefined => {
    const value = text(flag);
    return value === undefined ? undefined : parseDuration(value) / 1000;
  };
  const timing: Partial<ProbeSpec> = {};
  const period = seconds('probe-period');
  const timeout = seconds('probe-timeout');
  const delay = seconds('probe-delay');
  const failures = text('probe-failures');
  if (period !== undefined) timing.periodSeconds = period;
  if (timeout !== undefined) timing.timeoutSeconds = timeout;
  if (delay !== undefined) timing.initialDelaySeconds = delay;
  if (failures !== undefined) {
    const n = Number(failures);
    if (!Number.isInteger(n) || n < 1)
      throw new InvalidArgumentError(`invalid --probe-failures "${failures}": a whole number ≥ 1`);
    timing.failureThreshold = n;
  }
  return timing;
}

function parsePort(text: string, flag: string): number {
  const port = Number(text);
  if (!/^\d+$/.test(text) || port < 1 || port > 65535)
    throw new InvalidArgumentError(`invalid ${flag} "${text}": a port 1-65535`);
  return port;
}

/** `500ms`, `1s`, `1.5s`, `2m` → milliseconds. */
export function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m)$/.exec(text);
  if (!match) throw new InvalidArgumentError(`invalid duration "${text}": e.g. 500ms, 1s, 2m`);
  const value = Number(match[1]) * (match[2] === 'ms' ? 1 : match[2] === 's' ? 1000 : 60_000);
  return Math.round(value);
}

/**
 * The run request the flags describe: only the fields they set, so that they
 * can be merged over a spec file's.
 */
export function runDraftFromFlags(inv: Pick<Invocation, 'values' | 'positionals' | 'rest'>): RunDraft {
  const values = inv.values;
  const text = (flag: string): string | undefined =>
    typeof values[flag] === 'string' ? values[flag] : undefined;
  const list = (flag: string): string[] | undefined =>
    Array.isArray(values[flag]) ? values[flag] : undefined;
  const draft: RunDraft = {};
  const [name, ...extra] = inv.positionals;
  if (extra.length > 0)
    throw new InvalidArgumentError(`unexpected arguments: ${extra.join(' ')}\nusage: ${usage}`);
  if (name !== undefined) draft.name = name;
  if (text('image') !== undefined) draft.image = text('image');
  if (inv.rest.length > 0) draft.args = inv.rest;
  if (list('env')) draft.env = parseEnv(list('env')!);
  if (list('volume')) draft.volumes = list('volume')!.map(parseVolumeFlag);
  if (text('ip') !== undefined) draft.ip = text('ip');
  if (text('memory') !== undefined) draft.memoryBytes = parseMemorySize(text('memory')!);
  const cpu = text('cpu');
  if (cpu !== undefined) {
    const millis = Number(cpu);
    if (!/^\d+$/.test(cpu) || millis < 1)
      throw new InvalidArgumentError(`invalid --cpu "${cpu}": millicores, e.g. 500`);
    draft.cpuMillis = millis;
  }
  if (text('host') !== undefined) draft.host = text('host');
  if (list('label-require')) {
    draft.requireHostLabels = Object.fromEntries(
      list('label-require')!.map((pair) => {
        const at = pair.indexOf('=');
        if (at <= 0) throw new InvalidArgumentError(`invalid --label-require "${pair}": expected KEY=VALUE`);
        return [pair.slice(0, at), pair.slice(at + 1)];
      }),
    );
  }
  if (list('with')) draft.with = list('with');
  if (list('apart')) draft.apart = list('apart');
  const ha = text('ha');
  if (ha !== undefined) {
    if (ha !== 'none' && ha !== 'restart' && ha !== 'checkpoint' && ha !== 'continuous')
      throw new InvalidArgumentError(`invalid --ha "${ha}": none, restart, checkpoint or continuous`);
    draft.ha = ha;
  }
  if (text('interval') !== undefined && text('epoch') !== undefined)
    throw new InvalidArgumentError('give --epoch (continuous) or --interval (checkpoint), not both');
  if (text('interval') !== undefined) draft.intervalMs = parseDuration(text('interval')!);
  if (text('epoch') !== undefined) draft.intervalMs = parseDuration(text('epoch')!);
  if (list('publish')) draft.publish = list('publish')!.map((p) => parsePort(p, '--publish'));
  const { probe } = probeFromFlags(values);
  if (probe) draft.probe = probe as ProbeSpec;
  if (text('watchdog') !== undefined) {
    draft.watchdog = {
      timeoutSeconds: parseDuration(text('watchdog')!) / 1000,
      initialDelaySeconds: text('watchdog-delay') ? parseDuration(text('watchdog-delay')!) / 1000 : 0,
    };
  } else if (text('watchdog-delay') !== undefined) {
    throw new InvalidArgumentError('--watchdog-delay needs --watchdog');
  }
  return draft;
}

/** Flags and file merged; probe timing flags adjust the file's probe when no probe kind flag replaced it. */
function requestFrom(inv: Invocation, file: RunDraft | undefined): RunDraft {
  const flags = runDraftFromFlags(inv);
  const draft = file ? mergeRunDrafts(file, flags) : flags;
  const timing = probeTimingFromFlags(inv.values);
  if (Object.keys(timing).length > 0 && !flags.probe) {
    if (!draft.probe)
      throw new InvalidArgumentError(
        '--probe-period, --probe-timeout, --probe-delay and --probe-failures need a probe ' +
          '(--probe-exec, --probe-tcp, --probe-http, or livenessProbe in the spec file)',
      );
    draft.probe = { ...draft.probe, ...timing };
  }
  if (draft.name === undefined)
    throw new InvalidArgumentError(
      `a container name is required (NAME, or name: in the file)\nusage: ${usage}`,
    );
  if (draft.image === undefined)
    throw new InvalidArgumentError(`an image is required (--image, or image: in the file)\nusage: ${usage}`);
  if (!draft.args || draft.args.length === 0)
    throw new InvalidArgumentError(
      `a command to run is required (-- CMD ARGS..., or command:/args: in the file)\nusage: ${usage}`,
    );
  return draft;
}

/** Fields only a cluster acts on, with the flag and the spec file field that set them. */
const CLUSTER_ONLY: ReadonlyArray<[keyof RunDraft, string]> = [
  ['host', '--host / nodeName'],
  ['cpuMillis', '--cpu / resources.cpu'],
  ['requireHostLabels', '--label-require / nodeSelector'],
  ['with', '--with / affinity.with'],
  ['apart', '--apart / affinity.apart'],
  ['ha', '--ha / ha'],
  ['intervalMs', '--interval, --epoch / interval'],
  ['publish', '--publish / publish'],
  ['probe', '--probe-* / livenessProbe'],
  ['watchdog', '--watchdog / watchdog'],
];

/** `haven run`: create and start a container. */
export const runCommand: Command = {
  name: 'run',
  summary: 'create and start a container (from flags or a spec file)',
  usage,
  options: {
    file: { type: 'string', short: 'f' },
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
    epoch: { type: 'string' },
    publish: { type: 'string', multiple: true },
    'probe-exec': { type: 'string' },
    'probe-tcp': { type: 'string' },
    'probe-http': { type: 'string' },
    'probe-period': { type: 'string' },
    'probe-timeout': { type: 'string' },
    'probe-failures': { type: 'string' },
    'probe-delay': { type: 'string' },
    watchdog: { type: 'string' },
    'watchdog-delay': { type: 'string' },
  },
  async run(inv) {
    const file = typeof inv.values.file === 'string' ? await loadSpecFile(inv.values.file) : undefined;
    const request = requestFrom(inv, file);
    const name = request.name!;
    const image = request.image!;
    const cluster = inv.cluster();
    if (cluster) {
      const placed = await cluster.call<ClusterContainerView>('/v1/containers', {
        method: 'POST',
        timeoutMs: 600_000,
        body: {
          ...request,
          image: await cluster.imageRef(image),
          env: request.env ?? [],
          volumes: request.volumes ?? [],
        },
      });
      if (inv.values.json) printJson(placed);
      else
        process.stdout.write(
          `${placed.name} running on ${placed.host ?? '?'} at ${placed.ip} (pid ${placed.pid})\n`,
        );
      return 0;
    }
    for (const [field, how] of CLUSTER_ONLY) {
      if (request[field] !== undefined)
        throw new InvalidArgumentError(`${how} needs a cluster (none is running)`);
    }
    const view = await inv.host().run({
      name,
      image,
      args: request.args!,
      env: request.env ?? [],
      volumes: request.volumes ?? [],
      ...(request.ip !== undefined ? { ip: request.ip } : {}),
      ...(request.memoryBytes ? { memoryBytes: request.memoryBytes } : {}),
    });
    if (inv.values.json) printJson(view);
    else process.stdout.write(`${view.name} running on ${view.host} at ${view.ip} (pid ${view.pid})\n`);
    return 0;
  },
};
