/**
 * The etcd store and the election on a real 3-member etcd (Debian's
 * etcd-server, on loopback): the store keeps what SQLite keeps, generations
 * are etcd revisions that fence stale changes, a deposed leader's writes
 * are refused by etcd itself, a killed leader's office passes to a standby
 * within 2 s, and a leader that loses the quorum stops deciding until it
 * comes back — without being deposed.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Etcd3 } from 'etcd3';
import { EtcdStore, NotLeaderError, etcdClientOptions } from '../../src/controller/etcd-store.js';
import { LeaderElection } from '../../src/controller/leader.js';
import { ETCD_BIN, LocalEtcd, waitForEtcd } from '../../src/lab/etcd.js';

const skip = existsSync(ETCD_BIN)
  ? false
  : `needs ${ETCD_BIN} (Debian etcd-server; scripts/setup-host.sh installs it)`;

let dir = '';
let etcd: LocalEtcd;

before(async () => {
  if (skip) return;
  dir = await mkdtemp(join(tmpdir(), 'haven-etcd-'));
  // Ports apart from the lab's (2379+) and from the e2e test's.
  etcd = new LocalEtcd(join(dir, 'data'), 3, 23790, join(dir, 'etcd.log'));
  await etcd.start();
});

after(async () => {
  if (skip) return;
  await etcd.stop();
  await rm(dir, { recursive: true, force: true });
});

const host = {
  name: 'h1',
  address: 'http://10.88.0.11:7070',
  labels: { zone: 'a' },
  cpuMillis: 2000,
  memoryBytes: 2 ** 33,
  cordoned: false,
  registeredAt: '2026-11-26T00:00:00Z',
};

test(
  'hosts, intents, operations and events survive a new client; generations are revisions',
  { skip },
  async () => {
    const prefix = `t1-${Date.now()}/`;
    const first = new EtcdStore({ endpoints: etcd.endpoints, prefix });
    await first.putHost(host);
    assert.equal(
      await first.createContainer({
        name: 'redis',
        spec: { image: 'sha256:ab' },
        desired: 'running',
        host: 'h1',
      }),
      true,
    );
    assert.equal(
      await first.createContainer({ name: 'redis', spec: {}, desired: 'running' }),
      false,
      'a name is created once',
    );
    const created = await first.getContainer('redis');
    assert.ok(created);
    const moved = await first.updateContainer('redis', created.generation, { host: 'h2' });
    assert.ok(moved && moved.generation > created.generation, 'a change gives a newer generation');
    assert.equal(
      await first.updateContainer('redis', created.generation, { host: 'h3' }),
      undefined,
      'a stale generation changes nothing',
    );
    const unplaced = await first.updateContainer('redis', moved.generation, { host: undefined });
    assert.equal(unplaced?.host, undefined, 'host: undefined takes it off its host');
    await first.putOperation({
      container: 'redis',
      kind: 'failover',
      from: 'h1',
      to: 'h2',
      step: 'decided',
      generation: moved.generation,
      epoch: null,
      detail: { reason: 'host down' },
      startedAt: new Date().toISOString(),
    });
    const appended = await Promise.all([1, 2, 3].map((i) => first.appendEvent('k', `s${i}`, { i })));
    assert.deepEqual(
      appended.map((e) => e.seq),
      [1, 2, 3],
      'concurrent appends are numbered in order',
    );
    await first.close();

    const second = new EtcdStore({ endpoints: etcd.endpoints, prefix });
    assert.deepEqual((await second.getHost('h1'))?.labels, { zone: 'a' });
    assert.deepEqual(
      (await second.listHosts()).map((h) => h.name),
      ['h1'],
    );
    const redis = await second.getContainer('redis');
    assert.equal(redis?.generation, unplaced?.generation);
    assert.deepEqual(
      (await second.listOperations()).map((o) => [o.container, o.step]),
      [['redis', 'decided']],
    );
    assert.equal(await second.latestEventSeq(), 3);
    assert.deepEqual(
      (await second.eventsSince(1, 10)).map((e) => e.seq),
      [2, 3],
    );
    assert.equal((await second.appendEvent('k', 's4', {})).seq, 4);
    await second.deleteOperation('redis');
    assert.equal(await second.getOperation('redis'), undefined);
    assert.equal(await second.deleteContainer('redis', 1), false, 'delete needs the current generation');
    assert.equal(await second.deleteContainer('redis', redis!.generation), true);
    await second.close();
  },
);

test(
  'the leader is elected, a killed leader is replaced within 2 s, a deposed one cannot write',
  { skip },
  async () => {
    const prefix = `t2-${Date.now()}/`;
    const clientA = new Etcd3(etcdClientOptions(etcd.endpoints));
    const clientB = new Etcd3(etcdClientOptions(etcd.endpoints));
    const a = new LeaderElection({ client: clientA, address: 'http://a:7070' });
    const b = new LeaderElection({ client: clientB, address: 'http://b:7070' });
    try {
      const fenceA = await a.campaign();
      assert.equal(a.mayDecide(), true);
      const electedB = b.campaign();
      await sleep(300);
      assert.equal(b.role, 'standby');
      assert.equal(await b.leader(), 'http://a:7070');
      const storeA = new EtcdStore({ endpoints: etcd.endpoints, prefix, fence: fenceA, client: clientA });
      assert.equal(await storeA.createContainer({ name: 'c', spec: {}, desired: 'running' }), true);

      // A "killed" leader: its client stops talking to etcd (no resign, no keep-alive).
      const killedAt = Date.now();
      clientA.close();
      const fenceB = await electedB;
      const takeoverMs = Date.now() - killedAt;
      assert.ok(takeoverMs <= 2000, `a standby leads ${takeoverMs} ms after the leader stopped (goal ≤ 2 s)`);
      assert.ok(
        BigInt(fenceB.createRevision) > BigInt(fenceA.createRevision),
        'the fencing generation grows',
      );

      // The old leader's fence no longer holds: its writes are refused by etcd.
      const stale = new EtcdStore({ endpoints: etcd.endpoints, prefix, fence: fenceA });
      await assert.rejects(
        stale.createContainer({ name: 'd', spec: {}, desired: 'running' }),
        NotLeaderError,
      );
      await stale.close();
      const storeB = new EtcdStore({ endpoints: etcd.endpoints, prefix, fence: fenceB, client: clientB });
      assert.equal(await storeB.createContainer({ name: 'd', spec: {}, desired: 'running' }), true);
    } finally {
      await a.stop();
      await b.stop();
      clientB.close();
    }
  },
);

test(
  'a leader without a quorum decides nothing and is not deposed; with the quorum back it decides again',
  { skip },
  async () => {
    const client = new Etcd3(etcdClientOptions(etcd.endpoints));
    const election = new LeaderElection({ client, address: 'http://q:7070' });
    try {
      await election.campaign();
      await etcd.killMember('e2');
      await sleep(600);
      assert.equal(election.mayDecide(), true, 'one member down: a quorum remains');
      await etcd.killMember('e3');
      const lostAt = Date.now();
      while (election.mayDecide() && Date.now() - lostAt < 3000) await sleep(50);
      assert.equal(election.mayDecide(), false, 'no quorum: no decisions');
      await sleep(1500);
      assert.equal(election.role, 'leader', 'not deposed for it');
      etcd.startMember('e2');
      etcd.startMember('e3');
      await waitForEtcd(etcd.endpoints);
      const backAt = Date.now();
      while (!election.mayDecide() && Date.now() - backAt < 5000) await sleep(50);
      assert.equal(election.mayDecide(), true, 'quorum back: decisions resume');
      assert.equal(election.role, 'leader');
    } finally {
      await election.stop();
      client.close();
    }
  },
);
