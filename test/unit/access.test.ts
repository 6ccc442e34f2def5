/**
 * Who may call what under mutual TLS (core/access.ts), as pure rules: an
 * agent takes orders only from the controller's certificate and
 * replication only from agents'; at the controller an agent's certificate
 * registers and beats only as itself. A property test: whatever route an
 * agent certificate asks an agent for, it is either replication, an image,
 * health or metrics — or refused.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { authorizeAgentCall, authorizeControllerCall, authorizeRegistration } from '../../src/core/access.js';
import { HttpError, type Caller } from '../../src/core/http.js';

const controller: Caller = { kind: 'certificate', role: 'controller', host: 'ctl' };
const agent: Caller = { kind: 'certificate', role: 'agent', host: 'h2' };
const cli: Caller = { kind: 'certificate', role: 'cli', host: 'alice' };
const token: Caller = { kind: 'token' };

function allowed(check: () => void): boolean {
  try {
    check();
    return true;
  } catch (error) {
    assert.ok(error instanceof HttpError && error.status === 403, String(error));
    return false;
  }
}

const agentCall = (c: Caller, method: string, path: string | null): boolean =>
  allowed(() => authorizeAgentCall(c, method, path === null ? null : path.split('/')));
const controllerCall = (c: Caller, method: string, path: string | null): boolean =>
  allowed(() => authorizeControllerCall(c, method, path === null ? null : path.split('/')));

test('the agent API: orders from the controller, replication from agents, reads from the CLI', () => {
  for (const [method, path] of [
    ['POST', 'containers'],
    ['POST', 'containers/web/stop'],
    ['DELETE', 'containers/web'],
    ['POST', 'replicas/web/promote'],
    ['POST', 'probe'],
  ] as const) {
    assert.equal(agentCall(controller, method, path), true, `controller ${method} ${path}`);
    assert.equal(agentCall(token, method, path), true, `token ${method} ${path} (plain HTTP clusters)`);
    assert.equal(agentCall(agent, method, path), false, `agent ${method} ${path}`);
    assert.equal(agentCall(cli, method, path), false, `cli ${method} ${path}`);
  }
  for (const action of ['missing', 'chunks', 'epochs'])
    assert.equal(agentCall(agent, 'POST', `replicas/web/${action}`), true, action);
  assert.equal(agentCall(agent, 'GET', 'images/sha256:abcdef'), true);
  assert.equal(agentCall(agent, 'GET', 'health'), true);
  assert.equal(agentCall(agent, 'GET', null), true, '/metrics');
  assert.equal(agentCall(agent, 'GET', 'containers'), false);
  assert.equal(agentCall(cli, 'GET', 'containers'), true);
  assert.equal(agentCall(cli, 'GET', 'containers/web/logs'), true);
});

test('the controller API: an agent certificate registers and beats only as itself', () => {
  assert.equal(controllerCall(agent, 'POST', 'hosts'), true);
  assert.equal(controllerCall(agent, 'POST', 'hosts/h2/heartbeat'), true);
  assert.equal(controllerCall(agent, 'POST', 'hosts/h2/heartbeats'), true);
  assert.equal(controllerCall(agent, 'POST', 'hosts/h1/heartbeat'), false);
  assert.equal(controllerCall(agent, 'POST', 'hosts/h2/drain'), false);
  assert.equal(controllerCall(agent, 'POST', 'containers'), false);
  assert.equal(controllerCall(agent, 'GET', 'containers'), false);
  assert.equal(controllerCall(agent, 'GET', 'images/tiny'), true);
  for (const c of [controller, cli, token]) assert.equal(controllerCall(c, 'POST', 'containers'), true);
  assert.equal(
    allowed(() => authorizeRegistration(agent, 'h2')),
    true,
  );
  assert.equal(
    allowed(() => authorizeRegistration(agent, 'h1')),
    false,
  );
  assert.equal(
    allowed(() => authorizeRegistration(cli, 'h1')),
    true,
  );
});

test('property: an agent certificate gets nothing from an agent but replication, images, health and metrics', () => {
  const segment = fc.oneof(
    fc.constantFrom(
      'containers',
      'replicas',
      'images',
      'health',
      'probe',
      'web',
      'missing',
      'chunks',
      'epochs',
      'promote',
      'stop',
    ),
    fc.string({ maxLength: 8 }),
  );
  fc.assert(
    fc.property(
      fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'HEAD', 'PATCH'),
      fc.array(segment, { minLength: 1, maxLength: 4 }),
      (method, parts) => {
        const ok = allowed(() => authorizeAgentCall(agent, method, parts));
        const expected =
          (parts.length === 1 && parts[0] === 'health' && (method === 'GET' || method === 'HEAD')) ||
          (parts.length === 2 && parts[0] === 'images' && (method === 'GET' || method === 'HEAD')) ||
          (parts.length === 3 &&
            parts[0] === 'replicas' &&
            method === 'POST' &&
            ['missing', 'chunks', 'epochs'].includes(parts[2] ?? ''));
        assert.equal(ok, expected, `${method} /v1/${parts.join('/')}`);
      },
    ),
    { numRuns: 2000 },
  );
});
