/**
 * A bench's command line: node's `parseArgs`, plus `--help`, which prints the
 * "Usage" paragraph of the bench's own header comment (one text, kept where a
 * reader of the source looks). A bad option prints the error and that
 * paragraph and exits 64 (EX_USAGE) instead of a stack trace.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';

/** The "Usage" paragraph of the header comment of the module at `moduleUrl` (compiled output keeps comments). */
export function usageOf(moduleUrl: string): string {
  const source = readFileSync(fileURLToPath(moduleUrl), 'utf8');
  const header = /\/\*\*([\s\S]*?)\*\//.exec(source)?.[1] ?? '';
  const lines = header.split('\n').map((l) => l.replace(/^\s*\* ?/, ''));
  const from = lines.findIndex((l) => l.startsWith('Usage'));
  return from < 0 ? '(no usage in the header comment)' : lines.slice(from).join('\n').trimEnd();
}

/** `parseArgs(config)` for the bench at `moduleUrl`, answering `--help` and refusing bad options readably. */
export function benchArgs<T extends ParseArgsConfig>(
  moduleUrl: string,
  config: T,
): ReturnType<typeof parseArgs<T>> {
  const args = config.args ?? process.argv.slice(2);
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(`${usageOf(moduleUrl)}\n`);
    process.exit(0);
  }
  try {
    return parseArgs(config);
  } catch (error) {
    process.stderr.write(
      `${error instanceof Error ? error.message : String(error)}\n${usageOf(moduleUrl)}\n`,
    );
    process.exit(64);
  }
}
