/** The CLI's lazily loaded subcommands: each name loads the command of that name. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { COMMANDS } from '../../src/cli/registry.js';

test('every registered name loads the command that answers to it, once each', async () => {
  const names = COMMANDS.map(([name]) => name);
  assert.equal(new Set(names).size, names.length, 'no name twice');
  for (const [name, load] of COMMANDS) {
    const command = await load();
    assert.equal(command.name, name);
    assert.ok(command.summary.length > 0, `${name} has a summary`);
  }
});
