import { readFileSync } from 'node:fs';
import { InvalidArgumentError } from '../../core/errors.js';
import { daemonTls } from '../../core/tls.js';
import { logger } from '../../core/log.js';
import { ClusterLink } from '../../agent/cluster-link.js';
import { instrumentAgent } from '../../agent/metrics.js';
import { Prober } from '../../agent/probes.js';
import { Protection } from '../../agent/protection.js';
import { createAgentServer } from '../../agent/server.js';
import type { Command } from '../command.js';

const usage =
  'haven agent [--listen HOST:PORT] [--token-file FILE] [--controller URL --advertise URL]\n' +
  '            [--label K=V]... [--cpu-millis N] [--memory-bytes N] [--heartbeat-ms MS]\n' +
  '            [--heartbeat-transport datagram|stream] [--tls-dir DIR]   (token also from HAVEN_TOKEN;\n' +
  '            TLS directory also from HAVEN_TLS_DIR: mutual TLS with the cluster CA, see haven init --tls)';

/** Reads the cluster token from `--token-file` or `HAVEN_TOKEN`; at least 16 characters. */
export function readToken(file: unknown): string {
  const token =
    typeof file === 'string' ? readFileSync(file, 'utf8').trim() : (process.env.HAVEN_TOKEN ?? '');
  if (token.length < 16) {
    throw new InvalidArgumentError(
      'a cluster token of at least 16 characters is needed (--token-file or HAVEN_TOKEN)',
    );
  }
  return token;
}

/** Parses `HOST:PORT`. */
export function parseListen(text: string): { host: string; port: number } {
  const match = /^(.+):(\d{1,5})$/.exec(text);
  if (!match || Number(match[2]) > 65535)
    throw new InvalidArgumentError(`invalid --listen "${text}": expected HOST:PORT`);
  return { host: match[1]!, port: Number(match[2]) };
}

function positiveInteger(value: unknown, flag: string): number | undefined {
  if (typeof value !== 'string') return undefined;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1)
    throw new InvalidArgumentError(`invalid --${flag} "${value}": a positive whole number`);
  return n;
}

/**
 * `haven agent`: serve this host's containers over HTTP until stopped; with
 * `--controller`, join that cluster (register, heartbeat, pull images).
 */
export const agentCommand: Command = {
  name: 'agent',
  summary: "serve this host's containers over an authenticated HTTP API (and join a controller)",
  usage,
  options: {
    listen: { type: 'string' },
    'token-file': { type: 'string' },
    controller: { type: 'string' },
    advertise: { type: 'string' },
    label: { type: 'string', multiple: true },
    'cpu-millis': { type: 'string' },
    'memory-bytes': { type: 'string' },
    'heartbeat-ms': { type: 'string' },
    'heartbeat-transport': { type: 'string' },
    'tls-dir': { type: 'string' },
  },
  async run(inv) {
    const listenText = typeof inv.values.listen === 'string' ? inv.values.listen : '127.0.0.1:7070';
    const listen = parseListen(listenText);
    const token = readToken(inv.values['token-file']);
    // Mutual TLS when a TLS directory is given: HTTPS here, this certificate on every call out.
    const tls = daemonTls(inv.values['tls-dir']);
    const host = inv.host();
    // Their notices (an unhealthy container, fencing, a failed epoch) all call for attention: warnings.
    const probeLog = logger('agent.probes');
    const protectionLog = logger('agent.protection');
    const prober = new Prober(host, (line) => probeLog.warn(line));
    const advertise =
      typeof inv.values.advertise === 'string'
        ? inv.values.advertise
        : `${tls ? 'https' : 'http'}://${listenText}`;
    // Service addresses of continuous primaries go on the interface that carries the advertised address.
    const hostAddress = new URL(advertise).hostname.replace(/^\[(.*)\]$/, '$1');
    const protection = new Protection(host, token, (line) => protectionLog.warn(line), prober, hostAddress);
    let link: ClusterLink | undefined;
    if (typeof inv.values.controller === 'string') {
      const labels = Object.fromEntries(
        ((inv.values.label as string[] | undefined) ?? []).map((pair) => {
          const at = pair.indexOf('=');
          if (at <= 0) throw new InvalidArgumentError(`invalid --label "${pair}": expected KEY=VALUE`);
          return [pair.slice(0, at), pair.slice(at + 1)];
        }),
      );
      const cpuMillis = positiveInteger(inv.values['cpu-millis'], 'cpu-millis');
      const memoryBytes = positiveInteger(inv.values['memory-bytes'], 'memory-bytes');
      const heartbeatMs = positiveInteger(inv.values['heartbeat-ms'], 'heartbeat-ms');
      const transport = inv.values['heartbeat-transport'];
      if (transport !== undefined && transport !== 'datagram' && transport !== 'stream')
        throw new InvalidArgumentError(
          `invalid --heartbeat-transport "${String(transport)}": expected datagram or stream`,
        );
      link = new ClusterLink({
        host,
        controller: inv.values.controller,
        token,
        advertise,
        protection,
        prober,
        onPrimaries: (names) => void protection.onPrimaries(names),
        labels,
        ...(cpuMillis ? { cpuMillis } : {}),
        ...(memoryBytes ? { memoryBytes } : {}),
        ...(heartbeatMs ? { heartbeatMs } : {}),
        ...(transport ? { transport } : {}),
      });
    }
    const server = createAgentServer({
      host,
      token,
      protection,
      prober,
      ...(tls ? { tls } : {}),
      ...(link ? { pullImage: (id: string) => link.pullImage(id) } : {}),
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(listen.port, listen.host, () => resolve());
    });
    logger('agent').info(`host ${host.config.hostName} listening on ${listenText}`, {
      host: host.config.hostName,
      listen: listenText,
    });
    // Now, not inside the first checkpoint's freeze or the first migration's downtime.
    await host
      .prepare()
      .catch((error: unknown) =>
        logger('agent').warn(`cannot prepare the staging tmpfs or the bridge yet: ${String(error)}`),
      );
    const cluster = link;
    instrumentAgent({ host, protection, prober, ...(cluster ? { lastAckAt: () => cluster.lastAckAt } : {}) });
    await link?.start();
    await protection.resume();
    await prober.resume();
    if (link) {
      const cluster = link;
      protection.startFencing(() => cluster.lastAckAt);
    }
    await new Promise<void>((resolve) => {
      const stop = (): void => {
        link?.stop();
        void protection.stopAll();
        prober.stopAll();
        server.close(() => resolve());
        server.closeAllConnections();
      };
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    });
    return 0;
  },
};
