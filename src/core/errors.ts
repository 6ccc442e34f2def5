/**
 * Haven's closed family of errors. Every failure a user can see is one of
 * these, with a stable `code` for scripts and HTTP mapping at the boundary
 * (as containerd's errdefs do), and a `retryable` flag for callers that loop.
 *
 * @example
 * ```ts
 * throw new NotFoundError(`container "${name}" does not exist`);
 * ```
 */
export type ErrorCode =
  | 'invalid_argument'
  | 'not_found'
  | 'already_exists'
  | 'failed_precondition'
  | 'corrupt_checkpoint'
  | 'runtime_failed'
  | 'unavailable'
  | 'resource_exhausted'
  | 'internal';

/** Base class: a message for people, a code for programs. */
export class HavenError extends Error {
  constructor(
    message: string,
    readonly code: ErrorCode,
    readonly retryable = false,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** Thrown when user input (a name, a flag, a spec field) is malformed. */
export class InvalidArgumentError extends HavenError {
  constructor(message: string) {
    super(message, 'invalid_argument');
  }
}

/** Thrown when a named container, image, volume or checkpoint does not exist. */
export class NotFoundError extends HavenError {
  constructor(message: string) {
    super(message, 'not_found');
  }
}

/** Thrown when creating something whose name is taken. */
export class AlreadyExistsError extends HavenError {
  constructor(message: string) {
    super(message, 'already_exists');
  }
}

/** Thrown when the object is in the wrong state for the operation (e.g. restoring a running container). */
export class FailedPreconditionError extends HavenError {
  constructor(message: string) {
    super(message, 'failed_precondition');
  }
}

/** Thrown when a checkpoint fails verification: a missing, truncated or altered file. */
export class CorruptCheckpointError extends HavenError {
  constructor(message: string) {
    super(message, 'corrupt_checkpoint');
  }
}

/**
 * Thrown when runc or CRIU fail. Carries the tool's own error lines so the
 * user sees CRIU's words, not only ours.
 */
export class RuntimeFailedError extends HavenError {
  constructor(
    message: string,
    /** The tool that failed (runc, criu, ip, iptables, mount, ...). */
    readonly tool: string,
    readonly details: readonly string[],
  ) {
    super(details.length > 0 ? `${message}\n  ${details.join('\n  ')}` : message, 'runtime_failed');
  }
}

/**
 * Thrown by a controller that is not the leader of its control plane (a
 * standby, or one deposed) — or answered by one, over HTTP, as a 503 with
 * the leader's address: ask the leader instead.
 */
export class NotLeaderError extends HavenError {
  constructor(
    message: string,
    /** The current leader's API address, when known. */
    readonly leader?: string,
  ) {
    super(message, 'unavailable', true);
  }
}

/**
 * A disk (or quota) is full: what was being written is not written, nothing
 * else changed. Retryable once space is freed.
 */
export class NoSpaceError extends HavenError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'resource_exhausted', true, options);
  }
}

/**
 * A file system's "no space left" (ENOSPC, EDQUOT) as a {@link NoSpaceError}
 * that says so and where; any other error as it is.
 */
export function asNoSpace(error: unknown, where = 'this host'): unknown {
  const code = (error as NodeJS.ErrnoException | null)?.code;
  if (code !== 'ENOSPC' && code !== 'EDQUOT') return error;
  const path = (error as NodeJS.ErrnoException).path;
  return new NoSpaceError(
    `no space left on ${where}'s disk${path ? ` (writing ${path})` : ''}: free some space and try again`,
    { cause: error },
  );
}

/** Exit status the CLI uses for each error code. */
export function exitCodeFor(error: unknown): number {
  if (!(error instanceof HavenError)) return 70;
  switch (error.code) {
    case 'invalid_argument':
      return 64;
    case 'not_found':
    case 'already_exists':
    case 'failed_precondition':
      return 65;
    case 'corrupt_checkpoint':
      return 66;
    case 'unavailable':
      return 69;
    case 'resource_exhausted':
      return 73; // EX_CANTCREAT
    default:
      return 70;
  }
}
