/**
 * The φ accrual failure detector: φ grows with silence, the timeout follows
 * each host's own rhythm within its floor and ceiling, and a detector that
 * could not listen does not blame the hosts for it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  ArrivalWindow,
  phi,
  phiAccrualDefaults,
  thresholdDeviations,
} from '../../src/controller/failure-detector.js';

test('φ rises with silence and crosses the threshold where the deviations say', () => {
  assert.ok(phi(100, 100, 10) < 0.5, 'a beat due now is not suspect');
  let last = 0;
  for (let t = 100; t <= 300; t += 10) {
    const value = phi(t, 100, 10);
    assert.ok(value >= last, `φ never falls as silence grows (${t} ms)`);
    last = value;
  }
  const y = thresholdDeviations(8);
  assert.ok(Math.abs(phi(100 + y * 10, 100, 10) - 8) < 1e-6);
});

/** A window fed `count` beats `every` ms apart, with ± `jitter` alternating. */
function steady(every: number, jitter: number, ceilingMs = 1000): { window: ArrivalWindow; last: number } {
  const count = 100;
  const window = new ArrivalWindow(phiAccrualDefaults(100, ceilingMs));
  let t = 0;
  window.reset(t);
  for (let i = 0; i < count; i++) {
    t += every + (i % 2 === 0 ? jitter : -jitter);
    window.beat(t);
  }
  return { window, last: t };
}

test('a steady host is suspected after 0.35 s of silence, an irregular one later, never past the ceiling', () => {
  const quiet = steady(100, 2);
  assert.equal(quiet.window.timeoutMs(), 350, 'three lost beats in a row, no fewer');
  assert.equal(quiet.window.suspectAt(quiet.last + 340), false);
  assert.equal(quiet.window.suspectAt(quiet.last + 350), true);

  const busy = steady(100, 60);
  assert.ok(busy.window.timeoutMs() > 400, `jittery beats earn more time (${busy.window.timeoutMs()})`);
  assert.equal(busy.window.suspectAt(busy.last + 380), false);

  const wild = steady(100, 99);
  assert.ok(wild.window.timeoutMs() > 600, `${wild.window.timeoutMs()}`);
  assert.equal(steady(100, 99, 500).window.timeoutMs(), 500, 'the ceiling holds');
});

test('before any interval is measured, the expected period stands in', () => {
  const window = new ArrivalWindow(phiAccrualDefaults(100, 1000));
  window.reset(5000);
  const { meanMs, stdDevMs } = window.stats();
  assert.equal(meanMs, 100);
  assert.equal(stdDevMs, 25);
  assert.equal(window.suspectAt(5300), false);
  assert.equal(window.suspectAt(5350), true);
});

test('time the detector could not listen is excused', () => {
  const { window, last } = steady(100, 2);
  window.excuse(500);
  assert.equal(window.suspectAt(last + 800), false);
  assert.equal(window.suspectAt(last + 850), true);
});

test('a detector that is never well still suspects in the end: excuses stop at the ceiling', () => {
  const { window, last } = steady(100, 2);
  for (let i = 0; i < 100; i++) window.excuse(100);
  assert.equal(window.suspectAt(last + 350 + 999), false);
  assert.equal(window.suspectAt(last + 350 + 1000), true);
  window.beat(last + 2000);
  window.excuse(300);
  assert.equal(window.suspectAt(last + 2000 + 640), false, 'a beat starts a new allowance');
});

test('an outage is not rhythm: the gap that made a host suspect does not slow the next detection', () => {
  const { window, last } = steady(100, 2);
  const before = window.timeoutMs();
  window.beat(last + 3000); // back after a 3 s partition
  for (let i = 1; i <= 5; i++) window.beat(last + 3000 + i * 100);
  assert.equal(window.timeoutMs(), before);
});
