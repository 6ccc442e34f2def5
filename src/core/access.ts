/**
 * Which caller may call which route, in a cluster with mutual TLS (see
 * `tls.ts`). Pure functions of the caller and the route, so the rules read
 * in one place and are tested without servers.
 *
 *   agent API        controller certificate: everything (it gives the orders)
 *                    agent certificate: replication into this host (replicas/:name/
 *                      missing|chunks|epochs|announce), images (peers fetch them), health, metrics
 *                    cli certificate: reads only (GET)
 *   controller API   cli or controller certificate, or the token: everything
 *                    agent certificate: register as itself, its own heartbeats,
 *                      images, health, metrics
 *
 * The cluster token (plain-HTTP clusters, and scripts talking to a
 * controller) is allowed what it always was: everything.
 */
import type { Caller } from './http.js';
import { HttpError } from './http.js';

const REPLICATION = new Set(['missing', 'chunks', 'epochs', 'announce']);

/**
 * Throws 403 unless `caller` may call the agent route `method /v1/<parts>`
 * (`parts` null: `/metrics`).
 */
export function authorizeAgentCall(caller: Caller, method: string, parts: readonly string[] | null): void {
  if (caller.kind === 'token' || caller.role === 'controller') return;
  const read = method === 'GET' || method === 'HEAD';
  if (parts === null || (parts.length === 1 && parts[0] === 'health')) {
    if (read) return;
  } else if (caller.role === 'agent') {
    if (parts[0] === 'images' && parts.length === 2 && read) return;
    if (parts[0] === 'replicas' && parts.length === 3 && method === 'POST' && REPLICATION.has(parts[2] ?? ''))
      return;
    throw new HttpError(
      403,
      `an agent certificate (${caller.host}) may only replicate to this host, not ${method} /v1/${parts.join('/')}: orders come from the controller`,
    );
  } else if (read) return;
  throw new HttpError(
    403,
    `a ${caller.role} certificate (${caller.host}) may not ${method} here: orders come from the controller`,
  );
}

/**
 * Throws 403 unless `caller` may call the controller route `method
 * /v1/<parts>` (`parts` null: `/metrics`). An agent registering must
 * register as itself: the server checks the name in the body with
 * {@link authorizeRegistration}.
 */
export function authorizeControllerCall(
  caller: Caller,
  method: string,
  parts: readonly string[] | null,
): void {
  if (caller.kind === 'token' || caller.role !== 'agent') return;
  const read = method === 'GET' || method === 'HEAD';
  if (parts === null || (parts.length === 1 && parts[0] === 'health')) {
    if (read) return;
  } else if (parts[0] === 'images' && parts.length === 2 && read) return;
  else if (parts[0] === 'hosts' && method === 'POST') {
    if (parts.length === 1) return;
    if (
      parts.length === 3 &&
      parts[1] === caller.host &&
      (parts[2] === 'heartbeat' || parts[2] === 'heartbeats')
    )
      return;
  }
  throw new HttpError(
    403,
    `an agent certificate (${caller.host}) may only register itself, beat and fetch images, not ${method} /v1/${(parts ?? ['metrics']).join('/')}`,
  );
}

/** Throws 403 if an agent certificate registers a host other than its own. */
export function authorizeRegistration(caller: Caller, hostName: string): void {
  if (caller.kind === 'certificate' && caller.role === 'agent' && caller.host !== hostName)
    throw new HttpError(403, `an agent certificate for "${caller.host}" may not register host "${hostName}"`);
}
