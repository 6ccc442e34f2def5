/**
 * The lab's dashboard forwarder: the controller lives in its own network
 * namespace (10.88.0.2, unreachable from the root namespace by design), so
 * a browser on this machine reaches it through `127.0.0.1:DASHBOARD_PORT`,
 * copied byte for byte to the controller's Unix socket — as `socat
 * TCP-LISTEN:7080,bind=127.0.0.1,fork UNIX-CONNECT:controller.sock` would.
 * The supervisor runs it (`haven lab forward`) beside the controller, in
 * the lab's cgroup, so `lab down` ends it with everything else.
 *
 * It listens on loopback only and adds nothing: every request still needs
 * the cluster token or a dashboard session, as on the socket itself.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';

/** Most connections forwarded at once (a browser opens a handful; the rest wait in the backlog). */
const MAX_CONNECTIONS = 256;

/** Starts forwarding `127.0.0.1:port` to the Unix socket `socketPath`; resolves once listening. */
export function startForwarder(port: number, socketPath: string, host = '127.0.0.1'): Promise<Server> {
  const server = createServer((client: Socket) => {
    const upstream = connect(socketPath);
    // Either side ending or failing ends both: no half-open pairs left behind.
    const close = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close);
    upstream.on('error', close);
    client.on('close', close);
    upstream.on('close', close);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.maxConnections = MAX_CONNECTIONS;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port, host }, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

/** Runs the forwarder until SIGTERM or SIGINT (what `haven lab forward` does); resolves with the exit code. */
export async function runForwarder(port: number, socketPath: string): Promise<number> {
  const server = await startForwarder(port, socketPath);
  process.stdout.write(`${new Date().toISOString()} forwarding 127.0.0.1:${port} to ${socketPath}\n`);
  return new Promise((resolve) => {
    const stop = (): void => {
      server.close(() => resolve(0));
      // Open connections (an event stream) would hold close() forever.
      server.unref();
      setTimeout(() => resolve(0), 500).unref();
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
}
