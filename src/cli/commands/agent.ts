import { readFileSync } from 'node:fs';
import { InvalidArgumentError } from '../../core/errors.js';
import { createAgentServer } from '../../agent/server.js';
import type { Command } from '../command.js';

const usage = 'haven agent [--listen HOST:PORT] [--token-file FILE]   (or HAVEN_TOKEN)';

/** `haven agent`: serve this host's containers over HTTP until stopped. */
export const agentCommand: Command = {
  name: 'agent',
  summary: "serve this host's containers over an authenticated HTTP API",
  usage,
  options: { listen: { type: 'string' }, 'token-file': { type: 'string' } },
  async run(inv) {
    const listen = typeof inv.values.listen === 'string' ? inv.values.listen : '127.0.0.1:7070';
    const match = /^(.+):(\d{1,5})$/.exec(listen);
    if (!match) throw new InvalidArgumentError(`invalid --listen "${listen}": expected HOST:PORT`);
    const token =
      typeof inv.values['token-file'] === 'string'
        ? readFileSync(inv.values['token-file'], 'utf8').trim()
        : (process.env.HAVEN_TOKEN ?? '');
    if (token.length < 16) {
      throw new InvalidArgumentError(
        'the agent needs a cluster token of at least 16 characters (--token-file or HAVEN_TOKEN)',
      );
    }
    const server = createAgentServer({ host: inv.host(), token });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(Number(match[2]), match[1], () => resolve());
    });
    process.stdout.write(`haven agent for host ${inv.host().config.hostName} listening on ${listen}\n`);
    await new Promise<void>((resolve) => {
      const stop = (): void => void server.close(() => resolve());
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    });
    return 0;
  },
};
