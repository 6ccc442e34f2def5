/**
 * The demo (README command 1, via scripts/demo.sh): Redis in a Haven
 * container, loaded with keys by a real client from another network
 * namespace, checkpointed (the container stops), restored into a fresh
 * network namespace — and the keys and the client's open connection survive.
 *
 * It uses a state directory and namespaces of its own and removes them at
 * the end, so it leaves the machine as it found it.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { compileHostConfig, REPO_ROOT } from '../core/config.js';
import { run } from '../core/exec.js';
import { ContainerHost } from '../host/container-host.js';
import { redisImage, REDIS_ARGS } from '../fixtures/images.js';
import { createContainerNetwork, deleteNamespace } from '../runtime/network.js';

const KEYS = 100_000;
const say = (text: string): void => void process.stdout.write(`${text}\n`);

async function main(): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'haven-demo-'));
  const config = compileHostConfig({
    hostName: 'demo-host',
    stateDir: join(root, 'state'),
    runcRoot: join(root, 'runc'),
    networkNamespace: 'haven-demo-net',
  });
  const host = new ContainerHost(config);
  const clientNs = 'haven-demo-client';
  const ip = '10.88.0.2';
  const inClient = (argv: string[], input?: string) =>
    run(['nsenter', `--net=/run/netns/${clientNs}`, ...argv], input === undefined ? {} : { input });
  try {
    say('== Haven demo: Redis state survives a checkpoint and a restore ==');
    await createContainerNetwork(config, {
      netns: clientNs,
      address: '10.88.255.10',
      prefix: 16,
      mac: '02:48:0a:58:ff:0a',
    });
    const view = await host.run({
      name: 'redis',
      image: await redisImage(),
      ip: `${ip}/16`,
      args: REDIS_ARGS,
    });
    say(`started redis in container "redis" at ${view.ip} (pid ${view.pid})`);
    for (
      let i = 0;
      i < 100 &&
      (await inClient(['redis-cli', '-h', ip, 'PING']).catch(() => undefined))?.stdout.trim() !== 'PONG';
      i++
    ) {
      await sleep(100);
    }
    const commands = Array.from({ length: KEYS }, (_, i) => `SET key:${i} value-${i}`).join('\n');
    await inClient(['redis-cli', '-h', ip, '--pipe'], `${commands}\n`);
    say(
      `client (another network namespace) wrote ${KEYS} keys: DBSIZE = ${(await inClient(['redis-cli', '-h', ip, 'DBSIZE'])).stdout.trim()}`,
    );

    // One connection kept open across the whole story.
    const session = spawn('nsenter', [
      `--net=/run/netns/${clientNs}`,
      process.execPath,
      join(REPO_ROOT, 'fixtures/clients/resp-session.mjs'),
      ip,
      '6379',
    ]);
    const replies = createInterface({ input: session.stdout })[Symbol.asyncIterator]();
    const ask = async (line: string): Promise<string> => {
      session.stdin.write(`${line}\n`);
      return String((await replies.next()).value);
    };
    const hello = String((await replies.next()).value);
    say(`client opened a connection: ${hello}; INCR visits -> ${await ask('INCR visits')}`);

    const ck = await host.checkpoint('redis');
    say(
      `checkpoint ${ck.id}: frozen ${ck.frozenMs.toFixed(0)} ms, CRIU wrote ${ck.stats?.pagesWritten ?? '?'} pages; the container is now ${(await host.inspect('redis')).state}`,
    );
    const ping = await inClient(['redis-cli', '-h', ip, '-t', '1', 'PING']).catch(() => undefined);
    say(
      `while checkpointed, a new client gets: ${ping?.stdout.trim() || 'no answer (nothing runs at that address)'}`,
    );

    const restored = await host.restore('redis');
    say(
      `restored from ${restored.checkpoint} in ${restored.wallMs.toFixed(0)} ms, into a fresh network namespace`,
    );
    say(`the same connection asks again: INCR visits -> ${await ask('INCR visits')}`);
    say(`DBSIZE -> ${await ask('DBSIZE')}; GET key:${KEYS - 1} -> ${await ask(`GET key:${KEYS - 1}`)}`);
    session.stdin.end();
    session.kill();
    say('== done: every key and the open TCP connection survived ==');
  } finally {
    await host.remove('redis', { force: true }).catch(() => undefined);
    await host.unmountStaging().catch(() => undefined);
    await deleteNamespace(clientNs);
    await deleteNamespace(config.networkNamespace);
    await rm(root, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`demo failed: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
