/**
 * Cutting a text stream into records (NDJSON lines, server-sent event
 * blocks), however its chunks happen to fall. One place for the logic the
 * heartbeat stream, its acknowledgements and the event follower all need.
 */

/** Splits pushed text at `separator`; each complete record goes to `onRecord`. */
export class RecordSplitter {
  private buffer = '';
  private stopped = false;

  /**
   * @param onRecord called with each complete record (separator excluded);
   *   returning `false` stops the splitter: later text is ignored.
   */
  constructor(
    private readonly onRecord: (record: string) => boolean | void,
    private readonly separator = '\n',
  ) {}

  /** Adds a chunk and hands over every record it completes. */
  push(chunk: string): void {
    if (this.stopped) return;
    this.buffer += chunk;
    let end: number;
    while ((end = this.buffer.indexOf(this.separator)) >= 0) {
      const record = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + this.separator.length);
      if (this.onRecord(record) === false) {
        this.stopped = true;
        return;
      }
    }
  }

  /** What has arrived of the next, incomplete record (for size limits and messages). */
  get pending(): string {
    return this.buffer;
  }
}
