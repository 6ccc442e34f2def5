/**
 * The shape of a CLI subcommand, and the argument parsing they share.
 * Each subcommand lives in `commands/<verb>.ts` and exports one {@link Command}.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { InvalidArgumentError } from '../core/errors.js';
import { compileHostConfig } from '../core/config.js';
import { ContainerHost } from '../host/container-host.js';
import { ClusterClient, findCluster } from './cluster-client.js';

type Options = NonNullable<ParseArgsConfig['options']>;

/** Parsed arguments handed to a command. */
export interface Invocation {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
  /** Everything after a bare `--` (the container's command). */
  rest: string[];
  /** The local host, configured from global flags and `HAVEN_*`. */
  host(): ContainerHost;
  /**
   * The cluster's controller when the CLI should go through it (see
   * `cluster-client.ts`); undefined in local mode (`--state-dir`, `--runc-root`,
   * `HAVEN_LOCAL=1`, or no cluster running).
   */
  cluster(): ClusterClient | undefined;
}

/** One `haven` subcommand. */
export interface Command {
  name: string;
  summary: string;
  usage: string;
  options: Options;
  run(invocation: Invocation): Promise<number>;
}

/** Global flags every command accepts. */
export const GLOBAL_OPTIONS: Options = {
  'state-dir': { type: 'string' },
  'runc-root': { type: 'string' },
  'host-name': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
};

/** Parses a command's arguments; unknown flags are errors that name the flag. */
export function parseInvocation(command: Command, argv: string[]): Invocation {
  const dashDash = argv.indexOf('--');
  const own = dashDash >= 0 ? argv.slice(0, dashDash) : argv;
  const rest = dashDash >= 0 ? argv.slice(dashDash + 1) : [];
  let parsed;
  try {
    parsed = parseArgs({
      args: own,
      options: { ...GLOBAL_OPTIONS, ...command.options },
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    throw new InvalidArgumentError(`${(error as Error).message}\nusage: ${command.usage}`);
  }
  const values = parsed.values as Invocation['values'];
  let cached: ContainerHost | undefined;
  // Naming a state dir or runc root (by flag or environment) means "this host, directly".
  const localFlags =
    typeof values['state-dir'] === 'string' ||
    typeof values['runc-root'] === 'string' ||
    (process.env.HAVEN_CONTROLLER === undefined &&
      (process.env.HAVEN_STATE_DIR !== undefined || process.env.HAVEN_RUNC_ROOT !== undefined));
  let clusterClient: ClusterClient | undefined | null = null;
  return {
    cluster: () => {
      if (clusterClient === null) {
        const target = findCluster(process.env, localFlags);
        clusterClient = target ? new ClusterClient(target) : undefined;
      }
      return clusterClient;
    },
    values,
    positionals: parsed.positionals,
    rest,
    host: () =>
      (cached ??= new ContainerHost(
        compileHostConfig({
          ...(typeof values['state-dir'] === 'string' ? { stateDir: values['state-dir'] } : {}),
          ...(typeof values['runc-root'] === 'string' ? { runcRoot: values['runc-root'] } : {}),
          ...(typeof values['host-name'] === 'string' ? { hostName: values['host-name'] } : {}),
        }),
        undefined,
        { shortLived: true },
      )),
  };
}

/** The single positional NAME a command requires. */
export function requireName(invocation: Invocation, usage: string): string {
  const [name, ...extra] = invocation.positionals;
  if (!name) throw new InvalidArgumentError(`a container name is required\nusage: ${usage}`);
  if (extra.length > 0)
    throw new InvalidArgumentError(`unexpected arguments: ${extra.join(' ')}\nusage: ${usage}`);
  return name;
}

/** Prints rows as aligned columns (the first row is the header). */
export function printTable(rows: readonly (readonly string[])[]): void {
  const widths = (rows[0] ?? []).map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  for (const r of rows) {
    process.stdout.write(
      `${r
        .map((c, i) => c.padEnd(widths[i] ?? 0))
        .join('  ')
        .trimEnd()}\n`,
    );
  }
}

/** Prints a value as stable, indented JSON. */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}
