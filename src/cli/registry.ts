/** The `haven` subcommands, by name (see `main.ts`). */
import type { Command } from './command.js';

/**
 * Every subcommand by name, in the order `haven --help` lists them, each
 * loaded only when called: a command's module pulls in what it needs —
 * etcd's gRPC client for `controller`, the CA's X.509 code for `init` — and
 * `haven ps` should not pay for them (loading all of them took ~0.3 s of
 * every invocation).
 */
export const COMMANDS: ReadonlyArray<readonly [string, () => Promise<Command>]> = [
  ['run', async () => (await import('./commands/run.js')).runCommand],
  ['ps', async () => (await import('./commands/ps.js')).psCommand],
  ['inspect', async () => (await import('./commands/inspect.js')).inspectCommand],
  ['logs', async () => (await import('./commands/logs.js')).logsCommand],
  ['checkpoint', async () => (await import('./commands/checkpoint.js')).checkpointCommand],
  ['restore', async () => (await import('./commands/restore.js')).restoreCommand],
  ['stop', async () => (await import('./commands/stop.js')).stopCommand],
  ['rm', async () => (await import('./commands/rm.js')).rmCommand],
  ['failover', async () => (await import('./commands/failover.js')).failoverCommand],
  ['migrate', async () => (await import('./commands/migrate.js')).migrateCommand],
  ['drain', async () => (await import('./commands/drain.js')).drainCommand],
  ['host', async () => (await import('./commands/host.js')).hostCommand],
  ['image', async () => (await import('./commands/image.js')).imageCommand],
  ['events', async () => (await import('./commands/events.js')).eventsCommand],
  ['dashboard', async () => (await import('./commands/dashboard.js')).dashboardCommand],
  ['doctor', async () => (await import('./commands/doctor.js')).doctorCommand],
  ['agent', async () => (await import('./commands/agent.js')).agentCommand],
  ['controller', async () => (await import('./commands/controller.js')).controllerCommand],
  ['lab', async () => (await import('./commands/lab.js')).labCommand],
  ['init', async () => (await import('./commands/init.js')).initCommand],
  ['up', async () => (await import('./commands/up.js')).upCommand],
  ['down', async () => (await import('./commands/up.js')).downCommand],
];
