/**
 * Output commit for continuous protection (`--ha continuous`), as Remus does
 * it for virtual machines: every byte a protected container sends to a
 * client is held until the epoch whose checkpoint includes the state that
 * produced it is committed on the backup. A client is therefore never told
 * anything that a failover could take back.
 *
 * Clients connect to the container's *service address* (an address of the
 * primary's host that moves with the container). This proxy accepts them
 * there and connects to the container's own address:
 *
 *   client ──▶ service address:port ──▶ proxy ──▶ container ip:port
 *   client ◀── released in order ◀── held per epoch ◀── container's reply
 *
 * Client → container bytes pass at once (Remus does not delay input: a
 * request whose effect is lost is one whose reply was never released).
 *
 * Epoch boundaries ("cuts"). Every byte read from the container is stamped
 * with the current generation. Before an epoch's checkpoint begins, the
 * replicator calls {@link OutputCommitProxy.cut}, which closes the
 * generation: everything read so far was produced before the checkpoint's
 * freeze, so the checkpoint holds the state that produced it. When that
 * epoch is committed on the backup, {@link OutputCommitProxy.release} lets
 * out every byte of that generation and older. Bytes produced before the
 * freeze but read after the cut wait one epoch longer: conservative, never
 * early. A failed epoch releases nothing; the next committed one releases
 * its bytes too.
 *
 *   gen 1 bytes │ cut→1 │ gen 2 bytes │ cut→2 │ …
 *               └─ epoch A checkpoint  └─ epoch B checkpoint
 *   commit A → release(1)   commit B → release(2)
 *
 * Without a backup (none has room, or the only one died and no other is
 * free) nothing can be committed: the proxy then passes output straight
 * through — the container is exactly as protected as any single copy — and
 * says so in its {@link OutputCommitStats.mode}.
 */
import { createServer, connect, isIPv4, type Server, type Socket } from 'node:net';
import type { ServiceClient } from '../replication/chunks.js';

/** How a proxy treats the container's output. */
export type OutputMode = 'held' | 'passthrough';

/** What `haven inspect` shows of a container's output commit. */
export interface OutputCommitStats {
  mode: OutputMode;
  serviceAddress: string;
  ports: number[];
  connections: number;
  /** Bytes read from the container and not yet released to clients. */
  heldBytes: number;
  /** Age of the oldest held byte: the delay a client sees right now (0 when nothing is held). */
  outputDelayMs: number;
  /** Bytes released to clients since the proxy started. */
  releasedBytes: number;
  /** The newest generation released (0: none yet). */
  releasedGeneration: number;
}

/** Where the proxy listens and what it forwards to. */
export interface OutputCommitOptions {
  /** The service address clients use (no prefix). */
  serviceAddress: string;
  /** The container's own address (no prefix). */
  target: string;
  ports: readonly number[];
  mode: OutputMode;
  log?: (line: string) => void;
}

/**
 * A held connection stops reading from the container when this much of its
 * output waits for a commit: the container's socket buffer then fills and
 * the container itself waits, as it would behind a slow client.
 */
const MAX_HELD_BYTES_PER_CONNECTION = 8 * 1024 * 1024;

/** One piece of held output: bytes, or the container's end of the stream. */
interface Held {
  generation: number;
  at: number;
  data: Buffer | 'end';
}

/** One client connection and its upstream to the container. */
class Relay {
  readonly held: Held[] = [];
  heldBytes = 0;
  private upstreamPaused = false;

  constructor(
    private readonly proxy: OutputCommitProxy,
    readonly client: Socket,
    readonly upstream: Socket,
  ) {}

  /** Output read from the container: straight out, or held with the current generation. */
  fromContainer(data: Buffer | 'end'): void {
    if (this.proxy.mode === 'passthrough' && this.held.length === 0) {
      this.deliver(data);
      return;
    }
    this.held.push({ generation: this.proxy.generation, at: Date.now(), data });
    if (data !== 'end') {
      this.heldBytes += data.length;
      if (this.heldBytes > MAX_HELD_BYTES_PER_CONNECTION && !this.upstreamPaused) {
        this.upstreamPaused = true;
        this.upstream.pause();
      }
    }
  }

  /** Lets out every held piece of generation `upTo` or older, in order; returns the bytes released. */
  release(upTo: number): number {
    let released = 0;
    while (this.held.length > 0 && this.held[0]!.generation <= upTo) {
      const piece = this.held.shift()!;
      if (piece.data !== 'end') {
        released += piece.data.length;
        this.heldBytes -= piece.data.length;
      }
      this.deliver(piece.data);
    }
    if (this.upstreamPaused && this.heldBytes <= MAX_HELD_BYTES_PER_CONNECTION / 2) {
      this.upstreamPaused = false;
      this.upstream.resume();
    }
    return released;
  }

  private deliver(data: Buffer | 'end'): void {
    if (this.client.destroyed) return;
    if (data === 'end') this.client.end();
    else this.client.write(data);
  }

  oldestHeldAt(): number | undefined {
    return this.held[0]?.at;
  }

  destroy(): void {
    this.client.destroy();
    this.upstream.destroy();
  }

  /** Closes the client after what was already written to it; the container's side is reset. */
  end(): void {
    this.client.end();
    this.upstream.destroy();
  }
}

/** The output-commit proxy of one container on its primary host. */
export class OutputCommitProxy {
  /** The generation stamped on output read now; closed by {@link cut}. */
  generation = 1;
  mode: OutputMode;
  private readonly servers: Server[] = [];
  private readonly relays = new Set<Relay>();
  private releasedBytes = 0;
  private releasedGeneration = 0;
  private closed = false;
  private readonly log: (line: string) => void;

  constructor(private readonly options: OutputCommitOptions) {
    this.mode = options.mode;
    this.log = options.log ?? ((line) => process.stderr.write(`${line}\n`));
  }

  /** Listens on the service address, one listener per published port. */
  async start(): Promise<void> {
    for (const port of this.options.ports) {
      const server = createServer({ noDelay: true, allowHalfOpen: true }, (client) =>
        this.accept(client, port),
      );
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, this.options.serviceAddress, () => {
          server.off('error', reject);
          resolve();
        });
      });
      server.on('error', (error) =>
        this.log(`output commit: ${this.options.serviceAddress}:${port}: ${error.message}`),
      );
      this.servers.push(server);
    }
  }

  /**
   * The clients connected now (at most `limit`): what an epoch lists so that
   * a backup taking over can tickle them (see `tickleClients`).
   */
  clients(limit: number): ServiceClient[] {
    const list: ServiceClient[] = [];
    for (const relay of this.relays) {
      const { localPort, remoteAddress, remotePort } = relay.client;
      const address = remoteAddress?.replace(/^::ffff:/, '');
      if (localPort && remotePort && address && isIPv4(address))
        list.push({ port: localPort, address, clientPort: remotePort });
      if (list.length >= limit) break;
    }
    return list;
  }

  private accept(client: Socket, port: number): void {
    if (this.closed) {
      client.destroy();
      return;
    }
    const upstream = connect({ host: this.options.target, port, noDelay: true, allowHalfOpen: true });
    const relay = new Relay(this, client, upstream);
    this.relays.add(relay);
    // Client → container: at once, with back-pressure both ways.
    client.pipe(upstream);
    upstream.on('data', (data: Buffer) => relay.fromContainer(data));
    upstream.on('end', () => relay.fromContainer('end'));
    // A reset on either side resets the other: the client retries, as after a failover.
    const finish = (): void => {
      if (!this.relays.delete(relay)) return;
      relay.destroy();
    };
    client.on('error', finish);
    client.on('close', finish);
    upstream.on('error', finish);
    upstream.on('close', (hadError) => {
      // A clean end travels as a held 'end'; the client is closed when it is released.
      if (hadError) finish();
    });
  }

  /**
   * Closes the current generation and returns it: everything read from the
   * container so far is stamped with it. Called right before an epoch's
   * checkpoint begins.
   */
  cut(): number {
    return this.generation++;
  }

  /** The epoch whose checkpoint began after cut `generation` is committed: release its output. */
  release(generation: number): void {
    if (generation <= this.releasedGeneration) return;
    this.releasedGeneration = generation;
    for (const relay of this.relays) this.releasedBytes += relay.release(generation);
  }

  /**
   * Held (a backup exists) or passthrough (none does). Going to passthrough
   * releases everything held: without a backup there is no commit to wait for.
   */
  setMode(mode: OutputMode): void {
    if (mode === this.mode) return;
    this.mode = mode;
    if (mode === 'passthrough') {
      for (const relay of this.relays) this.releasedBytes += relay.release(Number.MAX_SAFE_INTEGER);
    }
  }

  stats(): OutputCommitStats {
    let heldBytes = 0;
    let oldest: number | undefined;
    for (const relay of this.relays) {
      heldBytes += relay.heldBytes;
      const at = relay.oldestHeldAt();
      if (at !== undefined && (oldest === undefined || at < oldest)) oldest = at;
    }
    return {
      mode: this.mode,
      serviceAddress: this.options.serviceAddress,
      ports: [...this.options.ports],
      connections: this.relays.size,
      heldBytes,
      outputDelayMs: oldest === undefined ? 0 : Date.now() - oldest,
      releasedBytes: this.releasedBytes,
      releasedGeneration: this.releasedGeneration,
    };
  }

  /**
   * Resets every connection and drops held output, still listening: the
   * container is being restored from an older epoch, so what it said since
   * must never reach a client.
   */
  reset(): void {
    for (const relay of this.relays) relay.destroy();
    this.relays.clear();
  }

  /**
   * Stops listening and resets every connection, dropping held output (the
   * copy that produced it is being fenced, removed or moved: its clients
   * retry against the next one). `graceful` (a planned switchover, all
   * output released) closes clients after what was written to them.
   */
  async close(options: { graceful?: boolean } = {}): Promise<void> {
    this.closed = true;
    for (const relay of this.relays) {
      if (options.graceful) relay.end();
      else relay.destroy();
    }
    this.relays.clear();
    await Promise.all(
      this.servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))),
    );
    this.servers.length = 0;
  }
}
