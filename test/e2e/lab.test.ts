/**
 * `haven lab` on the real machine, driven as a user drives it (the CLI as a
 * child process): three hosts up, reaching each other and nothing else,
 * each seeing only its own disk; an agent killed and restarted by the
 * supervisor; a host killed and revived empty; partitions healed; a link
 * shaped; and `down` — also after an `up` that failed part-way — leaving
 * nothing behind: no namespace, mount, process, cgroup, link or file.
 *
 * It takes the machine's one lab: a lab already up is torn down first.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { REPO_ROOT } from '../../src/core/config.js';
import { run, type ExecResult } from '../../src/core/exec.js';
import { isAlive, pidsInTree } from '../../src/lab/cgroups.js';
import {
  BRIDGE_NETNS,
  LAB_CGROUP,
  LAB_PATHS,
  MAX_HOSTS,
  hostCgroup,
  hostNames,
  labDown,
  readSupervisorStatus,
  type LabStatus,
} from '../../src/lab/index.js';
import { containerVethPrefix, shortHash } from '../../src/runtime/network.js';

const CLI = join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');
const isRoot = process.getuid?.() === 0;
const PING = existsSync('/usr/bin/ping') || existsSync('/bin/ping') ? ['ping'] : ['busybox', 'ping'];

function lab(args: string[], env: NodeJS.ProcessEnv = {}): Promise<ExecResult> {
  return run([process.execPath, CLI, 'lab', ...args], {
    allowFailure: true,
    env: { ...process.env, ...env },
    timeoutMs: 30_000,
  });
}

async function labOk(args: string[]): Promise<string> {
  const result = await lab(args);
  assert.equal(result.code, 0, `haven lab ${args.join(' ')} failed: ${result.stderr}`);
  return result.stdout;
}

async function status(): Promise<LabStatus> {
  const parsed = JSON.parse(await labOk(['status', '--json'])) as LabStatus | { up: false };
  assert.ok(parsed.up, 'the lab is up');
  return parsed;
}

/** Exit status of one ping from a lab namespace. */
async function ping(from: string, address: string): Promise<number> {
  return (await lab(['exec', from, '--', ...PING, '-c1', '-W1', address])).code;
}

/**
 * Exit status of pings until one is answered or `ms` pass: after a heal the
 * path comes back at once, but the first packet may still wait on a fresh ARP
 * resolution (the neighbour entry failed during the partition).
 */
async function pingWithin(from: string, address: string, ms = 3_000): Promise<number> {
  const deadline = Date.now() + ms;
  for (;;) {
    const code = await ping(from, address);
    if (code === 0 || Date.now() > deadline) return code;
  }
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 8_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** Everything of a lab that can be seen from the root namespace. */
async function traces(): Promise<string[]> {
  const found: string[] = [];
  const hashes = hostNames(MAX_HOSTS).map((h) => shortHash(h));
  for (const name of existsSync('/run/netns') ? readdirSync('/run/netns') : []) {
    if (name.startsWith('hvlab') || hashes.some((hash) => name.startsWith(`hvc-${hash}-`))) {
      found.push(`netns ${name}`);
    }
  }
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    if (/haven-lab|\/run\/haven\/lab|hvlab/.test(line)) found.push(`mount ${line}`);
  }
  for (const hierarchy of readdirSync('/sys/fs/cgroup')) {
    for (const relative of [LAB_CGROUP, ...hostNames(MAX_HOSTS).map(hostCgroup)]) {
      const dir = join('/sys/fs/cgroup', hierarchy, relative);
      if (existsSync(dir)) found.push(`cgroup ${dir}`);
    }
  }
  const links = await run(['ip', '-o', 'link', 'show'], { allowFailure: true });
  for (const line of links.stdout.split('\n')) if (/\bhvl-|hvbr0/.test(line)) found.push(`link ${line}`);
  for (const path of [LAB_PATHS.runDir, LAB_PATHS.stateDir]) if (existsSync(path)) found.push(`path ${path}`);
  return found;
}

/** Every PID the supervisor reports (itself, the controller, the agents). */
function reportedPids(): number[] {
  const s = readSupervisorStatus();
  if (!s) return [];
  return [s.supervisorPid, s.controller.pid, ...Object.values(s.hosts).map((h) => h.pid)].filter(
    (p): p is number => p !== null,
  );
}

async function rootRules(): Promise<string> {
  const nft = await run(['nft', 'list', 'ruleset'], { allowFailure: true });
  const ipt = await run(['iptables-save'], { allowFailure: true });
  // iptables-save stamps its output with the time: compare the rules only.
  return `${nft.stdout}\n${ipt.stdout.replace(/^#.*$/gm, '')}`;
}

let rulesBefore = '';
/** Mount points up may create outside the lab's paths: down must leave them as it found them. */
const MOUNT_POINTS = ['/var/lib/haven', '/run/haven/runc'];
let mountPointsBefore: boolean[] = [];

before(async () => {
  if (!isRoot) return;
  await labOk(['down']);
  rulesBefore = await rootRules();
  mountPointsBefore = MOUNT_POINTS.map((p) => existsSync(p));
});

after(async () => {
  if (!isRoot) return;
  // In-process as well: the CLI's files may be gone (a rebuild under way), the lab must go anyway.
  if ((await lab(['down'])).code !== 0) await labDown();
});

test(
  'up brings 3 hosts, a controller and a client; a second up is a no-op',
  { skip: !isRoot, timeout: 20_000 },
  async () => {
    await labOk(['up', '--hosts', '3']);
    const s = await status();
    assert.deepEqual(
      { url: s.controller.url, socket: s.controller.socket, namespace: s.controller.namespace },
      { url: 'http://10.88.0.2:7070', socket: '/run/haven/lab/controller.sock', namespace: 'hvlab-ctl' },
    );
    assert.deepEqual(s.client, { namespace: 'hvlab-client', address: '10.88.255.10' });
    assert.equal(s.token, '/var/lib/haven-lab/token');
    assert.deepEqual(
      s.hosts.map((h) => [h.name, h.namespace, h.address, h.state, h.shapedRate]),
      [
        ['h1', 'hvlab-h1', '10.88.0.11', 'up', null],
        ['h2', 'hvlab-h2', '10.88.0.12', 'up', null],
        ['h3', 'hvlab-h3', '10.88.0.13', 'up', null],
      ],
    );
    assert.ok(
      s.hosts.every((h) => typeof h.agentPid === 'number'),
      'every agent runs',
    );
    assert.match(readFileSync(LAB_PATHS.token, 'utf8'), /^[0-9a-f]{64}\n$/);
    assert.equal(statSync(LAB_PATHS.token).mode & 0o777, 0o600, 'the token is readable by root only');
    const pidsBefore = reportedPids();
    assert.match(await labOk(['up', '--hosts', '3']), /already up/);
    assert.deepEqual(reportedPids(), pidsBefore, 'the second up changed nothing');
    assert.notEqual((await lab(['up', '--hosts', '2'])).code, 0, 'up with another size is refused');
  },
);

test(
  'hosts, controller and client reach each other over the bridge',
  { skip: !isRoot, timeout: 15_000 },
  async () => {
    assert.equal(await ping('h1', '10.88.0.12'), 0, 'h1 → h2');
    assert.equal(await ping('h2', '10.88.0.11'), 0, 'h2 → h1');
    assert.equal(await ping('h1', '10.88.0.2'), 0, 'h1 → controller');
    assert.equal(await ping('client', '10.88.0.11'), 0, 'client → h1');
    assert.equal(await ping('controller', '10.88.255.10'), 0, 'controller → client');
    assert.equal(
      (await lab(['exec', 'h1', '--', 'sh', '-c', 'exit 7'])).code,
      7,
      'exec passes the exit code',
    );
    // The agents really serve on the lab network.
    const token = readFileSync(LAB_PATHS.token, 'utf8').trim();
    const probe = await lab([
      'exec',
      'client',
      '--',
      process.execPath,
      '-e',
      `fetch('http://10.88.0.11:7070/v1/health',{headers:{authorization:'Bearer ${token}'}}).then(r=>process.exit(r.ok?0:1),()=>process.exit(2))`,
    ]);
    assert.equal(probe.code, 0, "the client reaches h1's agent API");
  },
);

test('the root namespace has no address and no route in 10.88.0.0/16', { skip: !isRoot }, async () => {
  const addresses = await run(['ip', '-o', 'addr', 'show']);
  assert.doesNotMatch(addresses.stdout, /\b10\.88\./);
  const routes = await run(['ip', 'route', 'show', 'table', 'all']);
  assert.doesNotMatch(routes.stdout, /\b10\.88\./);
  const links = await run(['ip', '-o', 'link', 'show']);
  assert.doesNotMatch(links.stdout, /\bhvl-|hvbr0/, 'every lab link lives in a lab namespace');
});

test(
  "a host sees its own disk and nothing of another host's",
  { skip: !isRoot, timeout: 15_000 },
  async () => {
    await labOk(['exec', 'h2', '--', 'sh', '-c', 'echo h2 > /var/lib/haven/lab-marker']);
    // It landed on h2's disk, as seen from the root…
    assert.equal(readFileSync(join(LAB_PATHS.hostsDir, 'h2', 'lab-marker'), 'utf8'), 'h2\n');
    // …and h1 finds nothing of it, nor of any lab path.
    assert.equal(
      await labOk(['exec', 'h1', '--', 'ls', '-A', '/var/lib/haven-lab', '/run/haven/lab']),
      '/run/haven/lab:\n\n/var/lib/haven-lab:\n',
    );
    const found = await lab([
      'exec',
      'h1',
      '--',
      'sh',
      '-c',
      'find /var/lib/haven-lab /run/haven /var/lib/haven -name lab-marker; cat /var/lib/haven-lab/hosts/h2/lab-marker',
    ]);
    assert.equal(found.stdout, '', "h1 reaches no copy of h2's file");
    assert.notEqual(found.code, 0, "h2's disk path does not exist in h1");
    // h1's own disk is its own: the agent wrote there, and it is not h2's.
    assert.equal(
      (await labOk(['exec', 'h1', '--', 'ls', '-A', '/var/lib/haven'])).includes('lab-marker'),
      false,
    );
  },
);

test(
  'the supervisor restarts an agent and the controller that die',
  { skip: !isRoot, timeout: 20_000 },
  async () => {
    const first = (await status()).hosts[0]?.agentPid;
    assert.ok(typeof first === 'number');
    await sleep(1_000);
    assert.equal((await status()).hosts[0]?.agentPid, first, 'the agent stays up on its own (no crash loop)');
    const restarts = readSupervisorStatus()?.hosts.h1?.restarts ?? 0;
    process.kill(first, 'SIGKILL');
    const second = await waitFor('a new h1 agent', async () => {
      const pid = (await status()).hosts[0]?.agentPid;
      return typeof pid === 'number' && pid !== first ? pid : undefined;
    });
    assert.ok(isAlive(second));
    assert.equal(isAlive(first), false);
    assert.equal(readSupervisorStatus()?.hosts.h1?.restarts, restarts + 1);

    const controller = (await status()).controller.pid;
    assert.ok(typeof controller === 'number');
    // The CLI finds the lab by its socket (without one it acts on this host
    // alone): the path must stay there while the controller restarts.
    let socketMissing = 0;
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        if (!existsSync(LAB_PATHS.controllerSocket)) socketMissing++;
        await sleep(1);
      }
    })();
    process.kill(controller, 'SIGKILL');
    await waitFor('a new controller', async () => {
      const pid = (await status()).controller.pid;
      return typeof pid === 'number' && pid !== controller ? pid : undefined;
    });
    await waitFor('the new controller to answer', async () =>
      (await run([process.execPath, CLI, 'host', 'ls'], { allowFailure: true })).code === 0
        ? true
        : undefined,
    );
    watching = false;
    await watcher;
    assert.equal(socketMissing, 0, 'the controller socket went missing during the restart');
  },
);

test(
  'partition and heal a host, with and without its containers; the controller too',
  { skip: !isRoot, timeout: 20_000 },
  async () => {
    // A stand-in for one of h2's container links (an agent names them by this prefix).
    const fake = `${containerVethPrefix('h2')}0badcafe`;
    await run(['ip', '-n', BRIDGE_NETNS, 'link', 'add', fake, 'type', 'veth', 'peer', 'name', 'hvtestpeer']);
    await run(['ip', '-n', BRIDGE_NETNS, 'link', 'set', fake, 'up']);
    // Administratively up: UP among the flags (LOWER_UP is the carrier, not the admin state).
    const isUp = async (link: string): Promise<boolean> =>
      /<[^>]*\bUP\b[^>]*>/.test((await run(['ip', '-n', BRIDGE_NETNS, '-o', 'link', 'show', link])).stdout);
    const agent = (await status()).hosts[1]?.agentPid;

    await labOk(['partition', 'h2']);
    assert.notEqual(await ping('h1', '10.88.0.12'), 0, 'h1 cannot reach partitioned h2');
    assert.notEqual(await ping('client', '10.88.0.12'), 0, 'nor can the client');
    assert.equal(await ping('h1', '10.88.0.13'), 0, 'h1 still reaches h3');
    assert.equal(await isUp(fake), false, "h2's container links are down too");
    const s = await status();
    assert.equal(s.hosts[1]?.state, 'partitioned');
    assert.equal(s.hosts[1]?.agentPid, agent, 'processes live on');
    assert.ok(agent !== null && agent !== undefined && isAlive(agent));

    await labOk(['heal', 'h2']);
    assert.equal(await pingWithin('h1', '10.88.0.12'), 0, 'healed');
    assert.equal(await isUp(fake), true);
    assert.equal((await status()).hosts[1]?.state, 'up');

    await labOk(['partition', 'h2', '--keep-client']);
    assert.notEqual(await ping('h1', '10.88.0.12'), 0);
    assert.equal(await isUp(fake), true, 'with --keep-client the containers keep their links');
    await labOk(['heal', 'h2']);
    assert.equal(await pingWithin('h1', '10.88.0.12'), 0);
    await run(['ip', '-n', BRIDGE_NETNS, 'link', 'del', fake]);

    await labOk(['partition', 'controller']);
    assert.notEqual(await ping('h1', '10.88.0.2'), 0, 'the controller is cut off');
    assert.equal((await status()).controller.state, 'partitioned');
    await labOk(['heal', 'controller']);
    assert.equal(await pingWithin('h1', '10.88.0.2'), 0, 'and back');
  },
);

test('shape puts tbf on both ends of a host link, and off removes it', { skip: !isRoot }, async () => {
  await labOk(['shape', 'h1', '--rate', '1gbit']);
  assert.match(
    (await run(['tc', '-n', BRIDGE_NETNS, 'qdisc', 'show', 'dev', 'hvl-h1'])).stdout,
    /tbf .*rate 1Gbit/,
  );
  assert.match(
    (await run(['tc', '-n', 'hvlab-h1', 'qdisc', 'show', 'dev', 'eth0'])).stdout,
    /tbf .*rate 1Gbit/,
  );
  assert.equal((await status()).hosts[0]?.shapedRate, '1gbit');
  assert.notEqual((await lab(['shape', 'h1', '--rate', 'fast'])).code, 0, 'a bad rate is refused');
  await labOk(['shape', 'h1', '--rate', 'off']);
  assert.doesNotMatch(
    (await run(['tc', '-n', BRIDGE_NETNS, 'qdisc', 'show', 'dev', 'hvl-h1'])).stdout,
    /tbf/,
  );
  assert.equal((await status()).hosts[0]?.shapedRate, null);
});

test(
  'kill-host kills everything of a host and takes its disk; revive brings it back empty',
  { skip: !isRoot, timeout: 20_000 },
  async () => {
    await labOk(['exec', 'h3', '--', 'sh', '-c', 'echo h3 > /var/lib/haven/lab-marker']);
    // A process started in the host (as a container would be) dies with it.
    await labOk(['exec', 'h3', '--', 'sh', '-c', 'sleep 300 >/dev/null 2>&1 &']);
    const inHost = pidsInTree(hostCgroup('h3'));
    const agent = (await status()).hosts[2]?.agentPid;
    assert.ok(typeof agent === 'number' && inHost.includes(agent) && inHost.length >= 2);

    await labOk(['kill-host', 'h3']);
    assert.equal(existsSync('/run/netns/hvlab-h3'), false, 'its netns is gone');
    assert.equal(existsSync(join(LAB_PATHS.mntDir, 'h3')), false, 'its mount namespace is gone');
    assert.equal(existsSync(join(LAB_PATHS.hostsDir, 'h3')), false, 'its disk is gone');
    for (const pid of inHost) assert.equal(isAlive(pid), false, `pid ${pid} is dead`);
    assert.deepEqual(pidsInTree(hostCgroup('h3')), []);
    let s = await status();
    assert.equal(s.hosts[2]?.state, 'killed');
    assert.equal(s.hosts[2]?.agentPid, null);
    assert.notEqual(await ping('h1', '10.88.0.13'), 0);
    await sleep(500);
    assert.equal((await status()).hosts[2]?.agentPid, null, 'the supervisor does not restart a killed host');
    assert.notEqual((await lab(['exec', 'h3', '--', 'true'])).code, 0, 'a killed host runs nothing');

    await labOk(['revive', 'h3']);
    s = await status();
    assert.equal(s.hosts[2]?.state, 'up');
    await waitFor('h3 agent', async () => ((await status()).hosts[2]?.agentPid ?? undefined) || undefined);
    assert.equal(await ping('h1', '10.88.0.13'), 0);
    const disk = await labOk(['exec', 'h3', '--', 'ls', '-A', '/var/lib/haven']);
    assert.doesNotMatch(disk, /lab-marker/, 'the revived host has an empty disk');
  },
);

test(
  'down leaves nothing behind, and a second down is a no-op',
  { skip: !isRoot, timeout: 20_000 },
  async () => {
    const pids = reportedPids();
    const hostPids = hostNames(3).flatMap((h) => pidsInTree(hostCgroup(h)));
    assert.ok(pids.length >= 5);
    await labOk(['down']);
    assert.deepEqual(await traces(), []);
    for (const pid of [...pids, ...hostPids]) assert.equal(isAlive(pid), false, `pid ${pid} is dead`);
    assert.equal(existsSync('/run/netns/hvlab'), false);
    assert.notEqual((await run(['ip', '-n', 'hvlab', 'link'], { allowFailure: true })).code, 0);
    assert.equal(await rootRules(), rulesBefore, 'the root namespace has the same nft and iptables rules');
    assert.deepEqual(
      MOUNT_POINTS.map((p) => existsSync(p)),
      mountPointsBefore,
      'the mount points up made are gone',
    );
    await labOk(['down']);
    assert.deepEqual(JSON.parse(await labOk(['status', '--json'])), { up: false });
    assert.match(await labOk(['status']), /no lab is up/);
  },
);

test(
  'an up that fails part-way leaves nothing, nor does a down after it',
  { skip: !isRoot, timeout: 20_000 },
  async () => {
    for (const stage of ['hosts', 'supervisor']) {
      const failed = await lab(['up', '--hosts', '2'], { HAVEN_LAB_FAIL_AFTER: stage });
      assert.notEqual(failed.code, 0, `up failing after ${stage} exits non-zero`);
      assert.match(failed.stderr, new RegExp(`failing after stage "${stage}"`));
      assert.deepEqual(await traces(), [], `nothing left after a failure after ${stage}`);
      await labOk(['down']);
      assert.deepEqual(await traces(), []);
    }
  },
);
