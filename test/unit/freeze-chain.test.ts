import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { checkpointChainScript } from '../../src/runtime/runc/runc-driver.js';
import { lockTableRuleset, LOCK_COMMAND, UNLOCK_COMMAND } from '../../src/runtime/network.js';

test('the lock table drops eth0 traffic only while locked and not unlocked, and lets CRIU through', () => {
  const open = lockTableRuleset(false);
  assert.match(open, /set lock \{ type ifname; \}/);
  assert.match(lockTableRuleset(true), /set lock \{ type ifname; elements = \{ "eth0" \}; \}/);
  assert.match(open, /meta mark 0xc114 accept; iifname @lock iifname != @unlock drop;/);
  assert.match(open, /meta mark 0xc114 accept; oifname @lock oifname != @unlock drop;/);
  // Locking and unlocking only ever add elements: deletions wait for an RCU grace period.
  assert.match(LOCK_COMMAND.join(' '), /haven-netlock lock$/);
  assert.match(UNLOCK_COMMAND.join(' '), /haven-netlock unlock$/);
});

/** Runs a chain script with bash against a fake cgroup v1 freezer file. */
async function runChain(
  dump: string[],
  hooks: Parameters<typeof checkpointChainScript>[1],
  options: { held?: boolean } = {},
) {
  const dir = await mkdtemp(join(tmpdir(), 'haven-chain-'));
  const state = join(dir, 'freezer.state');
  await writeFile(state, 'THAWED\n');
  const log = join(dir, 'log');
  const held = join(dir, 'held');
  if (options.held) await writeFile(held, '');
  const script = checkpointChainScript(dump, hooks, { path: state, version: 1, held });
  const r = spawnSync('bash', ['-c', script], { input: 'go\n', env: { ...process.env, LOG: log } });
  const out = {
    code: r.status,
    stdout: r.stdout.toString(),
    state: (await readFile(state, 'utf8')).trim(),
    log: await readFile(log, 'utf8').catch(() => ''),
  };
  await rm(dir, { recursive: true });
  return out;
}

test('the chain freezes, runs hooks around the dump in order, thaws, and stamps its phases', async () => {
  const r = await runChain(['sh', '-c', 'echo dump >> "$LOG"'], {
    before: [['sh', '-c', 'echo lock >> "$LOG"']],
    alongside: [['sh', '-c', 'echo copy >> "$LOG"']],
    after: [['sh', '-c', 'echo unlock >> "$LOG"']],
  });
  assert.equal(r.code, 0);
  assert.equal(r.state, 'THAWED');
  const lines = r.log.trim().split('\n');
  assert.equal(lines[0], 'lock');
  assert.ok(lines.indexOf('dump') < lines.indexOf('unlock'));
  assert.ok(lines.includes('copy'));
  assert.match(r.stdout, /haven-times [\d.]+ [\d.]+ [\d.]+ [\d.]+/);
});

test('a holder is signalled to keep packets once locked and to let them through after the unlock', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'haven-holder-'));
  const log = join(dir, 'log');
  const signals = join(dir, 'signals');
  // A stand-in holder: records the signals it gets (its traps run as they come, asynchronously to the chain).
  const holder = spawn(
    'bash',
    [
      '-c',
      `trap 'echo hold >> "$SIGNALS"' USR1; trap 'echo release >> "$SIGNALS"; exit 0' USR2; echo ready; while :; do sleep 0.05 & wait $!; done`,
    ],
    { env: { ...process.env, SIGNALS: signals }, stdio: ['ignore', 'pipe', 'ignore'] },
  );
  await new Promise((resolve) => holder.stdout.once('data', resolve));
  const hooks = {
    before: [['sh', '-c', 'echo lock >> "$LOG"']],
    after: [['sh', '-c', 'echo unlock >> "$LOG"']],
    holderPid: holder.pid,
  };
  const script = checkpointChainScript(['sh', '-c', 'echo dump >> "$LOG"'], hooks, undefined);
  // In the script: the hold right after the lock and before the dump, the release after the unlock.
  const at = (text: string): number => script.indexOf(text);
  assert.ok(at('echo lock') < at(`kill -USR1 ${holder.pid}`));
  assert.ok(at(`kill -USR1 ${holder.pid}`) < at('echo dump'));
  assert.ok(at('echo unlock') < at(`kill -USR2 ${holder.pid}`));
  const r = spawnSync('bash', ['-c', script], { input: 'go\n', env: { ...process.env, LOG: log } });
  await new Promise((resolve) => (holder.exitCode === null ? holder.once('close', resolve) : resolve(0)));
  assert.equal(r.status, 0);
  assert.deepEqual((await readFile(log, 'utf8')).trim().split('\n'), ['lock', 'dump', 'unlock']);
  assert.deepEqual((await readFile(signals, 'utf8')).trim().split('\n'), ['hold', 'release']);

  // A holder that is gone changes nothing: the chain unlocks as before.
  await writeFile(log, '');
  const gone = checkpointChainScript(['sh', '-c', 'echo dump >> "$LOG"'], hooks, undefined);
  const again = spawnSync('bash', ['-c', gone], { input: 'go\n', env: { ...process.env, LOG: log } });
  assert.equal(again.status, 0);
  assert.deepEqual((await readFile(log, 'utf8')).trim().split('\n'), ['lock', 'dump', 'unlock']);
  await rm(dir, { recursive: true });
});

test('a failed dump still unlocks and thaws, and its status comes back', async () => {
  const r = await runChain(['sh', '-c', 'exit 7'], { after: [['sh', '-c', 'echo unlock >> "$LOG"']] });
  assert.equal(r.code, 7);
  assert.equal(r.state, 'THAWED');
  assert.equal(r.log.trim(), 'unlock');
});

test('a failed lock aborts before the dump (125), a failed file copy fails the checkpoint (124)', async () => {
  const lock = await runChain(['sh', '-c', 'echo dump >> "$LOG"'], { before: [['false']] });
  assert.equal(lock.code, 125);
  assert.equal(lock.state, 'THAWED');
  assert.equal(lock.log, '');
  const copy = await runChain(['true'], { alongside: [['false']] });
  assert.equal(copy.code, 124);
});

test('arguments with spaces and quotes reach the commands intact', async () => {
  const r = await runChain(
    ['sh', '-c', 'printf "%s|" "$@" >> "$LOG"', 'x', "it's", 'a b', '{ "eth0" }'],
    undefined,
  );
  assert.equal(r.code, 0);
  assert.equal(r.log, `it's|a b|{ "eth0" }|`);
});

test('cgroup v2: the chain writes cgroup.freeze and waits for cgroup.events to say frozen', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'haven-chain-v2-'));
  const freeze = join(dir, 'cgroup.freeze');
  await writeFile(freeze, '0\n');
  await writeFile(join(dir, 'cgroup.events'), 'populated 1\nfrozen 1\n');
  const script = checkpointChainScript(['true'], undefined, { path: freeze, version: 2 }, true);
  const r = spawnSync('bash', ['-c', script], { input: 'go\n' });
  assert.equal(r.status, 0);
  assert.equal((await readFile(freeze, 'utf8')).trim(), '1', 'kept frozen after a successful dump');
  await rm(dir, { recursive: true });
});

test('a container held (paused on purpose) stays frozen after the dump, whether it succeeded, failed or its lock did', async () => {
  // The hold may come while the dump runs (fencing): the chain looks for it only when it would thaw.
  const held = await runChain(['sh', '-c', 'touch "$(dirname "$LOG")/held"'], undefined);
  assert.equal(held.code, 0);
  assert.equal(held.state, 'FROZEN', 'a hold taken during the dump');
  for (const [dump, hooks] of [
    [['true'], undefined],
    [['sh', '-c', 'exit 7'], undefined],
    [['true'], { before: [['false']] }],
  ] as const) {
    const r = await runChain([...dump], hooks, { held: true });
    assert.notEqual(r.code, null);
    assert.equal(r.state, 'FROZEN', `dump ${dump.join(' ')}`);
  }
});
