/**
 * Running host tools (runc, criu, ip, iptables, mount) and turning their
 * failures into {@link RuntimeFailedError}s that carry the tool's own words.
 */
import { spawn } from 'node:child_process';
import { RuntimeFailedError } from './errors.js';

/** What a finished command produced. */
export interface ExecResult {
  stdout: string;
  stderr: string;
  code: number;
}

/**
 * `HAVEN_TRACE=1` prints every command Haven runs, and the steps of a
 * migration's downtime, with the time each ended and its duration, to stderr.
 */
const TRACE = process.env.HAVEN_TRACE === '1';

/**
 * Prints `what` with the time it ended and its duration (since `startedAt`,
 * a `performance.now()` reading) when HAVEN_TRACE=1; a no-op otherwise.
 */
export function trace(what: string, startedAt: number): void {
  if (!TRACE) return;
  const ended = new Date().toISOString().slice(11, 23);
  process.stderr.write(
    `[trace] ${ended} ${(performance.now() - startedAt).toFixed(1).padStart(7)} ms  ${what}\n`,
  );
}

/** Options for {@link run}. */
export interface ExecOptions {
  /**
   * Text written to the command's stdin; a promise of it starts the command
   * now and hands it its input later (a process start taken off a critical
   * path: the command waits, already running, on its input).
   */
  input?: string | Promise<string>;
  /** Do not throw on a non-zero exit; return the result instead. */
  allowFailure?: boolean;
  /** Kill the command after this many milliseconds. */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/** Runs `argv[0]` with the rest as arguments (no shell) and collects its output. */
export function run(argv: readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new Error('run: empty argv');
  const started = TRACE ? performance.now() : 0;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: options.env ?? process.env,
      cwd: options.cwd,
      timeout: options.timeoutMs,
      // A command past its time is ended for sure: some (runc exec into a stopped
      // container) ignore SIGTERM.
      killSignal: 'SIGKILL',
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) =>
      reject(new RuntimeFailedError(`cannot run ${cmd}: ${e.message}`, toolName(cmd, args), [])),
    );
    child.on('close', (code, signal) => {
      trace(argv.join(' ').slice(0, 160), started);
      const result = {
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
        code: code ?? 128,
      };
      if (result.code === 0 || options.allowFailure) {
        resolve(result);
        return;
      }
      const why = signal ? `killed by ${signal}` : `exit ${result.code}`;
      const lines = lastLines(result.stderr || result.stdout, 8);
      reject(
        new RuntimeFailedError(`${argv.slice(0, 4).join(' ')} failed (${why})`, toolName(cmd, args), lines),
      );
    });
    // A command that exits without reading its input must not crash us with EPIPE.
    child.stdin.on('error', () => undefined);
    void Promise.resolve(options.input ?? '').then((text) => child.stdin.end(text));
  });
}

/** The last `n` non-empty lines of a tool's output. */
export function lastLines(text: string, n: number): string[] {
  return text
    .split('\n')
    .map((l) => l.trimEnd())
    .filter((l) => l.length > 0)
    .slice(-n);
}

function toolName(cmd: string, args: readonly string[]): string {
  // nsenter and timeout wrap the real tool; name the tool, not the wrapper.
  if (cmd === 'nsenter') return args.find((a) => !a.startsWith('-')) ?? cmd;
  return cmd.split('/').pop() ?? cmd;
}

/**
 * `bash -c` without start-up files. Node hands a child its stdin as a Unix
 * socket, and bash sources `~/.bashrc` when its stdin is a socket and it
 * thinks it is a login's first shell (no `SHLVL`, as under systemd): with a
 * root `.bashrc` that runs `pyenv init`, that cost ~100 ms before every
 * checkpoint chain (measured: spawn → "go" 100–150 ms, 3 ms with --norc).
 */
export const BASH_C = ['bash', '--norc', '--noprofile', '-c'] as const;
