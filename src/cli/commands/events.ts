import { InvalidArgumentError } from '../../core/errors.js';
import { errorFrom, openRequest } from '../../core/http-client.js';
import { RecordSplitter } from '../../core/records.js';
import type { StoredEvent } from '../../controller/store.js';
import type { Command } from '../command.js';
import { requireCluster } from './host.js';

const usage = 'haven events [-f|--follow] [--since SEQ] [--json]   (-f without --since: from now on)';

function format(event: StoredEvent, json: boolean): string {
  if (json) return `${JSON.stringify(event)}\n`;
  const data = Object.keys(event.data).length > 0 ? ` ${JSON.stringify(event.data)}` : '';
  return `${event.at}  #${event.seq}  ${event.kind.padEnd(20)} ${event.subject}${data}\n`;
}

/** `haven events`: what happened in the cluster; `-f` follows as it happens (server-sent events). */
export const eventsCommand: Command = {
  name: 'events',
  summary: "print the cluster's events (-f follows them live)",
  usage,
  options: { follow: { type: 'boolean', short: 'f' }, since: { type: 'string' }, json: { type: 'boolean' } },
  async run(inv) {
    const cluster = requireCluster(inv);
    const since = typeof inv.values.since === 'string' ? Number(inv.values.since) : undefined;
    if (since !== undefined && (!Number.isSafeInteger(since) || since < 0))
      throw new InvalidArgumentError(`invalid --since "${String(inv.values.since)}"`);
    const json = inv.values.json === true;
    if (!inv.values.follow) {
      for (const e of await cluster.call<StoredEvent[]>(`/v1/events?since=${since ?? 0}&limit=10000`))
        process.stdout.write(format(e, json));
      return 0;
    }
    const res = await openRequest(
      cluster.target.endpoint,
      `/v1/events?follow=true${since === undefined ? '' : `&since=${since}`}`,
      cluster.target.token,
      {
        timeoutMs: 0,
        headers: { accept: 'text/event-stream' },
      },
    );
    if ((res.statusCode ?? 500) !== 200) throw await errorFrom(res);
    res.setEncoding('utf8');
    // Server-sent events: blocks separated by a blank line; the event is its `data:` line.
    const blocks = new RecordSplitter((block) => {
      const data = block.split('\n').find((l) => l.startsWith('data: '));
      if (data) process.stdout.write(format(JSON.parse(data.slice(6)) as StoredEvent, json));
    }, '\n\n');
    for await (const chunk of res) blocks.push(chunk as string);
    return 0;
  },
};
