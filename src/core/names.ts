/**
 * Validation of the names users give Haven. A name becomes a directory, a
 * runc container ID and part of a network namespace name, so it must never
 * escape its directory or smuggle in shell or path syntax.
 */
import { InvalidArgumentError } from './errors.js';

const NAME_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,62}$/;

/**
 * Returns `name` if it is a valid container or volume name; throws otherwise.
 * @param kind what the name is for, used in the message ("container", "volume").
 */
export function validateName(name: unknown, kind: string): string {
  if (typeof name !== 'string' || name.length === 0) {
    throw new InvalidArgumentError(`${kind} name is required`);
  }
  if (name.length > 63) {
    throw new InvalidArgumentError(`${kind} name "${name.slice(0, 70)}…" is longer than 63 characters`);
  }
  if (!NAME_PATTERN.test(name) || name.includes('..')) {
    throw new InvalidArgumentError(
      `invalid ${kind} name "${name}": use lower-case letters, digits, '_', '.' and '-', starting with a letter or digit`,
    );
  }
  return name;
}

/** Parses a memory size such as `512m`, `1g`, `65536k` or a byte count. */
export function parseMemorySize(text: string): number {
  const match = /^(\d+)([kmg]?)b?$/i.exec(text.trim());
  if (!match) throw new InvalidArgumentError(`invalid memory size "${text}": use e.g. 512m or 2g`);
  const units: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };
  const bytes = Number(match[1]) * (units[(match[2] ?? '').toLowerCase()] ?? 1);
  if (bytes < 4 * 1024 * 1024) throw new InvalidArgumentError(`memory limit "${text}" is below 4 MiB`);
  return bytes;
}

/** An IPv4 address with its prefix length, as containers are given them. */
export interface Ipv4Cidr {
  address: string;
  prefix: number;
}

/** Parses `10.88.0.5/16`; throws a clear error for anything else. */
export function parseIpv4Cidr(text: string): Ipv4Cidr {
  const match = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(text);
  if (!match) throw new InvalidArgumentError(`invalid address "${text}": expected IPv4 ADDR/PREFIX`);
  const octets = match.slice(1, 5).map(Number);
  const prefix = Number(match[5]);
  if (octets.some((o) => o > 255) || prefix < 8 || prefix > 30) {
    throw new InvalidArgumentError(`invalid address "${text}": octets 0-255, prefix 8-30`);
  }
  return { address: octets.join('.'), prefix };
}

/** A MAC address derived from an IPv4 address: locally administered, stable, and moves with the IP. */
export function macForIp(address: string): string {
  const hex = address.split('.').map((o) => Number(o).toString(16).padStart(2, '0'));
  return ['02', '48', ...hex].join(':');
}

/** Parses `KEY=VALUE` environment entries. */
export function parseEnv(entries: readonly string[]): string[] {
  for (const entry of entries) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*=/.test(entry)) {
      throw new InvalidArgumentError(`invalid environment entry "${entry}": expected KEY=VALUE`);
    }
  }
  return [...entries];
}
