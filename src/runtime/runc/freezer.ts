/**
 * Freezing a container's cgroup directly through cgroupfs.
 *
 * Why not `runc pause` or CRIU's own freeze: CRIU writes FROZEN and, when the
 * cgroup v1 freezer is still FREEZING on its first look (it always is), sleeps
 * a fixed 100 ms before looking again (criu/seize.c, `step_ms`). That sleep
 * alone was 100 ms of a 16 MB container's ~135 ms freeze. Freezing here with a
 * tight poll takes well under a millisecond; CRIU then finds the cgroup already
 * FROZEN and starts dumping at once (and leaves it frozen for us to thaw).
 * It also saves starting the runc binary twice per checkpoint.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** How long a freeze may take before we give up and thaw (processes stuck in D state). */
const FREEZE_TIMEOUT_MS = 5_000;

/** The freezer control of a cgroup, v1 (`freezer.state`) or v2 (`cgroup.freeze`). */
export interface FreezerControl {
  freeze(): void;
  thaw(): void;
  isFrozen(): boolean;
}

/** Builds the control for a cgroup v1 freezer directory or a cgroup v2 directory. */
export function freezerControl(cgroupDir: string): FreezerControl {
  const v1 = join(cgroupDir, 'freezer.state');
  if (existsSync(v1)) {
    return {
      freeze() {
        writeFileSync(v1, 'FROZEN');
        const deadline = Date.now() + FREEZE_TIMEOUT_MS;
        // Busy-poll: the transition takes microseconds, and every ms here is a ms of freeze.
        while (readFileSync(v1, 'utf8').trim() !== 'FROZEN') {
          if (Date.now() > deadline) {
            writeFileSync(v1, 'THAWED');
            throw new Error(`cgroup ${cgroupDir} did not freeze within ${FREEZE_TIMEOUT_MS} ms`);
          }
          writeFileSync(v1, 'FROZEN'); // v1 may need asking again (see CRIU's freezer kludges)
        }
      },
      thaw() {
        writeFileSync(v1, 'THAWED');
      },
      isFrozen: () => readFileSync(v1, 'utf8').trim() === 'FROZEN',
    };
  }
  const v2 = join(cgroupDir, 'cgroup.freeze');
  const events = join(cgroupDir, 'cgroup.events');
  return {
    freeze() {
      writeFileSync(v2, '1');
      const deadline = Date.now() + FREEZE_TIMEOUT_MS;
      while (!/^frozen 1$/m.test(readFileSync(events, 'utf8'))) {
        if (Date.now() > deadline) {
          writeFileSync(v2, '0');
          throw new Error(`cgroup ${cgroupDir} did not freeze within ${FREEZE_TIMEOUT_MS} ms`);
        }
      }
    },
    thaw() {
      writeFileSync(v2, '0');
    },
    isFrozen: () => /^frozen 1$/m.test(readFileSync(events, 'utf8')),
  };
}
