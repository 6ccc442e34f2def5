/**
 * Structured logs for the daemons (controller, agent): one JSON object per
 * line on stderr — `time`, `level`, `module`, `msg`, then the call's fields —
 * so that journald, Loki or `jq` can select by module and field rather than
 * by regular expression. `HAVEN_LOG=text` writes the same as a readable line
 * (`2025-01-01T00:00:00.000Z warn  agent.protection: froze c1 container=c1`)
 * for a person at a terminal. `HAVEN_LOG_LEVEL` (`debug`, `info` default,
 * `warn`, `error`) drops what is below it.
 *
 * ```ts
 * const log = logger('agent.protection');
 * log.warn(`fencing: froze ${name}`, { container: name, silentMs });
 * ```
 *
 * Messages stay readable sentences; what a script would select on goes in
 * fields. Modules are `role.part` (`agent.link`, `controller.failover`).
 */

/** Severity, lowest first. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/** A log call's fields: anything JSON can carry; errors become their message. */
export type LogFields = Record<string, unknown>;

/** Writes log records for one module. */
export interface Logger {
  /** The module every record carries, e.g. `agent.link`. */
  readonly module: string;
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** A logger for a part of this module: `agent` → `agent.link`. */
  child(part: string): Logger;
}

/** Where and how records go (defaults from the environment at creation). */
export interface LogOptions {
  /** `json` (default) or `text` (`HAVEN_LOG=text`). */
  format?: 'json' | 'text';
  /** Lowest level written (`HAVEN_LOG_LEVEL`, default `info`). */
  level?: LogLevel;
  /** Receives each formatted line, without its line feed (default: stderr). */
  write?: (line: string) => void;
}

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** The record's own keys: a field of the same name is written as `field.<name>` rather than overwrite them. */
const RESERVED = new Set(['time', 'level', 'module', 'msg']);

function levelFrom(text: string | undefined): LogLevel {
  return text === 'debug' || text === 'warn' || text === 'error' ? text : 'info';
}

/** A field's value as JSON can carry it: errors as their message (and code), bigints as strings. */
function plain(value: unknown): unknown {
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code;
    return typeof code === 'string' ? { message: value.message, code } : value.message;
  }
  if (typeof value === 'bigint') return value.toString();
  return value;
}

/** One JSON line: `time`, `level`, `module`, `msg` first, then the fields. */
export function formatJson(
  time: Date,
  level: LogLevel,
  module: string,
  msg: string,
  fields?: LogFields,
): string {
  const record: Record<string, unknown> = { time: time.toISOString(), level, module, msg };
  for (const [key, value] of Object.entries(fields ?? {})) {
    if (value === undefined) continue;
    record[RESERVED.has(key) ? `field.${key}` : key] = plain(value);
  }
  try {
    return JSON.stringify(record);
  } catch {
    // A cycle or an exotic value in a field: the record still goes out, its fields as text.
    const texts = Object.entries(fields ?? {}).map(([k, v]) => [`field.${k}`, String(v)]);
    return JSON.stringify({ time: record.time, level, module, msg, ...Object.fromEntries(texts) });
  }
}

/** One readable line: time, level, module, message, then `key=value` per field (quoted when it has spaces). */
export function formatText(
  time: Date,
  level: LogLevel,
  module: string,
  msg: string,
  fields?: LogFields,
): string {
  let line = `${time.toISOString()} ${level.padEnd(5)} ${module}: ${msg}`;
  for (const [key, value] of Object.entries(fields ?? {})) {
    if (value === undefined) continue;
    const v = plain(value);
    let text: string;
    try {
      text = typeof v === 'string' ? v : (JSON.stringify(v) ?? String(v));
    } catch {
      text = String(v);
    }
    line += ` ${key}=${/[\s"=]/.test(text) || text === '' ? JSON.stringify(text) : text}`;
  }
  return line;
}

class ModuleLogger implements Logger {
  private readonly min: number;
  constructor(
    readonly module: string,
    private readonly options: Required<LogOptions>,
  ) {
    this.min = RANK[options.level];
  }

  private record(level: LogLevel, msg: string, fields?: LogFields): void {
    if (RANK[level] < this.min) return;
    const format = this.options.format === 'text' ? formatText : formatJson;
    this.options.write(format(new Date(), level, this.module, msg, fields));
  }

  debug(msg: string, fields?: LogFields): void {
    this.record('debug', msg, fields);
  }
  info(msg: string, fields?: LogFields): void {
    this.record('info', msg, fields);
  }
  warn(msg: string, fields?: LogFields): void {
    this.record('warn', msg, fields);
  }
  error(msg: string, fields?: LogFields): void {
    this.record('error', msg, fields);
  }
  child(part: string): Logger {
    return new ModuleLogger(`${this.module}.${part}`, this.options);
  }
}

/**
 * A logger for `module`. Format and level come from `HAVEN_LOG` and
 * `HAVEN_LOG_LEVEL` as they are when it is made (module-level loggers: at
 * start-up), unless `options` say otherwise.
 */
export function logger(module: string, options: LogOptions = {}): Logger {
  return new ModuleLogger(module, {
    format: options.format ?? (process.env.HAVEN_LOG === 'text' ? 'text' : 'json'),
    level: options.level ?? levelFrom(process.env.HAVEN_LOG_LEVEL),
    write: options.write ?? ((line) => void process.stderr.write(`${line}\n`)),
  });
}

/**
 * A logger that hands readable lines (`msg key=value…`, no time, level or
 * module) to `write`: for a caller that collects lines, such as a test
 * injecting `(line) => lines.push(line)` where a component takes a line sink.
 */
export function lineLogger(module: string, write: (line: string) => void): Logger {
  return logger(module, {
    format: 'text',
    level: 'debug',
    write: (line) => write(line.slice(line.indexOf(': ') + 2)),
  });
}
