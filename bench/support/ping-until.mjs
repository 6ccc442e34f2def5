#!/usr/bin/env node
// Pings a TCP echo server (memhog --port) every INTERVAL ms until its stdin
// closes, then prints what a client felt as one JSON line:
// {"sent","received","maxGapMs","maxRttMs","p50RttMs","resumed"} — the
// longest gap between two replies is the pause a migration caused. A
// connection that breaks is reported ({"error"}): a migration must keep it.
// One that went silent without breaking is waited for (at most WAIT_MS): after
// a long outage the client's retransmissions back off exponentially (up to
// ~25 s apart after 20 s), so the first reply may come well after the move.
// Without a reply by then, the gap counts until the stop and "resumed" is
// false — a silent connection must not read as a short gap.
// Usage: node ping-until.mjs HOST PORT [INTERVAL_MS] [WAIT_MS]   (close stdin to stop)
import net from 'node:net';

const [host, port, intervalText = '2', waitText = '60000'] = process.argv.slice(2);
const interval = Number(intervalText);
const waitMs = Number(waitText);
/** A silence longer than this at the stop is waited out (see above). */
const SILENT_MS = 200;
let replied = () => undefined;
const sentAt = [];
const rtts = [];
let lastReply;
let maxGap = 0;
let received = 0;
let error;

const socket = net.connect({ host, port: Number(port) });
socket.setNoDelay(true);
socket.on('error', (e) => (error = e.message));
socket.on('close', () => (error ??= 'connection closed'));
socket.on('connect', () => {
  lastReply = performance.now();
  setInterval(() => {
    sentAt.push(performance.now());
    socket.write('p');
  }, interval);
});
socket.on('data', (data) => {
  const now = performance.now();
  for (let i = 0; i < data.length; i++) {
    const t = sentAt[received++];
    if (t !== undefined) rtts.push(now - t);
  }
  maxGap = Math.max(maxGap, now - lastReply);
  lastReply = now;
  replied();
});
process.stdin.resume();
process.stdin.on('end', async () => {
  let resumed = true;
  if (lastReply !== undefined && !error && performance.now() - lastReply > SILENT_MS) {
    resumed = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), waitMs);
      replied = () => {
        clearTimeout(timer);
        resolve(true);
      };
    });
    if (!resumed) maxGap = Math.max(maxGap, performance.now() - lastReply);
  }
  const sorted = [...rtts].sort((a, b) => a - b);
  console.log(
    JSON.stringify({
      sent: sentAt.length,
      received,
      maxGapMs: Number(maxGap.toFixed(2)),
      maxRttMs: Number((sorted.at(-1) ?? 0).toFixed(2)),
      p50RttMs: Number((sorted[Math.floor(sorted.length / 2)] ?? 0).toFixed(2)),
      resumed,
      ...(error ? { error } : {}),
    }),
  );
  process.exit(0);
});
