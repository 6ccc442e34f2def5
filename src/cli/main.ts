/**
 * The `haven` command line. Each subcommand is a module in `commands/`;
 * this file only dispatches and maps errors to exit codes and messages.
 */
import { exitCodeFor, HavenError } from '../core/errors.js';
import { parseInvocation, type Command } from './command.js';
import { agentCommand } from './commands/agent.js';
import { checkpointCommand } from './commands/checkpoint.js';
import { controllerCommand } from './commands/controller.js';
import { dashboardCommand } from './commands/dashboard.js';
import { eventsCommand } from './commands/events.js';
import { failoverCommand } from './commands/failover.js';
import { hostCommand } from './commands/host.js';
import { imageCommand } from './commands/image.js';
import { doctorCommand } from './commands/doctor.js';
import { drainCommand } from './commands/drain.js';
import { inspectCommand } from './commands/inspect.js';
import { labCommand } from './commands/lab.js';
import { logsCommand } from './commands/logs.js';
import { migrateCommand } from './commands/migrate.js';
import { psCommand } from './commands/ps.js';
import { restoreCommand } from './commands/restore.js';
import { rmCommand } from './commands/rm.js';
import { runCommand } from './commands/run.js';
import { stopCommand } from './commands/stop.js';
import { initCommand } from './commands/init.js';
import { downCommand, upCommand } from './commands/up.js';

const COMMANDS: readonly Command[] = [
  runCommand,
  psCommand,
  inspectCommand,
  logsCommand,
  checkpointCommand,
  restoreCommand,
  stopCommand,
  rmCommand,
  failoverCommand,
  migrateCommand,
  drainCommand,
  hostCommand,
  imageCommand,
  eventsCommand,
  dashboardCommand,
  doctorCommand,
  agentCommand,
  controllerCommand,
  labCommand,
  initCommand,
  upCommand,
  downCommand,
];

function helpText(): string {
  const lines = [
    'haven: high availability for stateful Linux containers (runc + CRIU)',
    '',
    'usage: haven COMMAND [options]',
    '',
    'commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(12)} ${c.summary}`),
    '',
    'global options:',
    '  --state-dir DIR   host state directory (HAVEN_STATE_DIR, default /var/lib/haven)',
    '  --runc-root DIR   runc state root (HAVEN_RUNC_ROOT, default /run/haven/runc)',
    "  --host-name NAME  this host's name (HAVEN_HOST, default the hostname)",
    '',
    "Run 'haven COMMAND --help' for a command's options.",
  ];
  return `${lines.join('\n')}\n`;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...args] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(helpText());
    return name ? 0 : 64;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) {
    process.stderr.write(`haven: unknown command "${name}"\n\n${helpText()}`);
    return 64;
  }
  const invocation = parseInvocation(command, args);
  if (invocation.values.help) {
    process.stdout.write(`usage: ${command.usage}\n\n${command.summary}\n`);
    return 0;
  }
  return command.run(invocation);
}

// `haven ps | head`: a reader that went away is not an error.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code === 'EPIPE') process.exit(0);
  throw error;
});

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    const message =
      error instanceof HavenError
        ? error.message
        : error instanceof Error
          ? (error.stack ?? error.message)
          : String(error);
    process.stderr.write(`haven: ${message}\n`);
    process.exitCode = exitCodeFor(error);
  },
);
