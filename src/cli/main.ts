/**
 * The `haven` command line. Each subcommand is a module in `commands/`;
 * this file only dispatches and maps errors to exit codes and messages.
 */
import { exitCodeFor, HavenError } from '../core/errors.js';
import { parseInvocation } from './command.js';
import { COMMANDS } from './registry.js';

/** The overview: the only place every command is loaded (for its summary). */
async function helpText(): Promise<string> {
  const commands = await Promise.all(COMMANDS.map(([, load]) => load()));
  const lines = [
    'haven: high availability for stateful Linux containers (runc + CRIU)',
    '',
    'usage: haven COMMAND [options]',
    '',
    'commands:',
    ...commands.map((c) => `  ${c.name.padEnd(12)} ${c.summary}`),
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
    process.stdout.write(await helpText());
    return name ? 0 : 64;
  }
  const load = COMMANDS.find(([known]) => known === name)?.[1];
  if (!load) {
    process.stderr.write(`haven: unknown command "${name}"\n\n${await helpText()}`);
    return 64;
  }
  const command = await load();
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
