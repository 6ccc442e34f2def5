import { spawn } from 'node:child_process';
import { FailedPreconditionError, InvalidArgumentError } from '../../core/errors.js';
import { CLUSTER_PATHS } from '../cluster-client.js';
import { DASHBOARD_URL } from '../../lab/paths.js';
import { printJson, type Command } from '../command.js';

const usage = 'haven dashboard [--open] [--json] [--url http://HOST:PORT]';

/** The one-machine cluster's controller listens here (`haven up`). */
const LOCAL_CONTROLLER_URL = 'http://127.0.0.1:7070';

/**
 * `haven dashboard`: prints a URL that logs a browser into the dashboard
 * once (a login token valid for two minutes, as Jupyter's token URL), and
 * with `--open` opens it. The address is the controller's as a browser on
 * this machine reaches it: the lab's loopback forwarder, `haven up`'s
 * 127.0.0.1:7070, `HAVEN_CONTROLLER`'s, or `--url`.
 */
export const dashboardCommand: Command = {
  name: 'dashboard',
  summary: 'print (or --open) a one-time login URL of the web dashboard',
  usage,
  options: {
    open: { type: 'boolean' },
    json: { type: 'boolean' },
    url: { type: 'string' },
  },
  async run(inv) {
    if (inv.positionals.length > 0)
      throw new InvalidArgumentError(`unexpected arguments: ${inv.positionals.join(' ')}\nusage: ${usage}`);
    const cluster = inv.cluster();
    if (!cluster)
      throw new FailedPreconditionError(
        'no cluster to show: start one (haven up, haven lab up) or set HAVEN_CONTROLLER',
      );
    const base = baseUrl(cluster.target.endpoint, inv.values.url);
    const grant = await cluster.call<{ path: string; expiresAt: string }>('/v1/dashboard/logins', {
      method: 'POST',
      body: {},
    });
    const url = `${base}${grant.path}`;
    if (inv.values.json) printJson({ url, expiresAt: grant.expiresAt });
    else process.stdout.write(`${url}\n`);
    if (inv.values.open) openBrowser(url);
    return 0;
  },
};

/** Where a browser on this machine reaches the controller behind `endpoint`. */
function baseUrl(endpoint: string, explicit: unknown): string {
  if (typeof explicit === 'string') {
    let url: URL;
    try {
      url = new URL(explicit);
    } catch {
      throw new InvalidArgumentError(`--url must be http://HOST:PORT, not "${explicit}"`);
    }
    if (url.protocol !== 'http:' || url.pathname !== '/' || url.search !== '')
      throw new InvalidArgumentError(`--url must be http://HOST:PORT, not "${explicit}"`);
    return url.origin;
  }
  if (endpoint.startsWith('http://')) return new URL(endpoint).origin;
  if (endpoint === `unix:${CLUSTER_PATHS.labSocket}`) return DASHBOARD_URL;
  if (endpoint === `unix:${CLUSTER_PATHS.localSocket}`) return LOCAL_CONTROLLER_URL;
  throw new InvalidArgumentError(
    `the controller is reached through ${endpoint}: say where a browser reaches it with --url http://HOST:PORT`,
  );
}

/** Opens `url` with the desktop's browser (xdg-open); says so on stderr when there is none. */
function openBrowser(url: string): void {
  const child = spawn('xdg-open', [url], { detached: true, stdio: 'ignore' });
  child.once('error', () =>
    process.stderr.write('haven: cannot open a browser (no xdg-open): open the URL above yourself\n'),
  );
  child.unref();
}
