import { compileHostConfig } from '../../core/config.js';
import { runDoctor } from '../../doctor/doctor.js';
import { printJson, type Command } from '../command.js';

/** `haven doctor`: check this machine; exit 0 only if Haven can run. */
export const doctorCommand: Command = {
  name: 'doctor',
  summary: 'check that this machine can run Haven, and say how to fix what is missing',
  usage: 'haven doctor [--json]',
  options: { json: { type: 'boolean' } },
  async run(inv) {
    const checks = await runDoctor(compileHostConfig());
    const usable = checks.every((c) => c.ok || !c.required);
    if (inv.values.json) printJson({ usable, checks });
    else {
      for (const c of checks) {
        const mark = c.ok ? 'ok  ' : c.required ? 'FAIL' : 'warn';
        process.stdout.write(`${mark} ${c.name.padEnd(20)} ${c.detail}\n`);
        if (!c.ok && c.fix) process.stdout.write(`     ${''.padEnd(20)} fix: ${c.fix}\n`);
      }
      process.stdout.write(
        usable
          ? 'Haven can run on this machine.\n'
          : 'Haven cannot run here until the FAIL lines are fixed.\n',
      );
    }
    return usable ? 0 : 1;
  },
};
