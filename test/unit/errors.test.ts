/**
 * Errors at the API boundary: a full disk (ENOSPC, EDQUOT) reaches the
 * caller as "no space left" on the named host — HTTP 507, code
 * `resource_exhausted`, CLI exit 73 — never as an internal error.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { asNoSpace, exitCodeFor, NoSpaceError } from '../../src/core/errors.js';
import { statusFor } from '../../src/core/http.js';

function systemError(code: string, path?: string): NodeJS.ErrnoException {
  const error: NodeJS.ErrnoException = new Error(`${code}: write`);
  error.code = code;
  if (path) error.path = path;
  return error;
}

test('ENOSPC and EDQUOT become a NoSpaceError naming the host and the file', () => {
  for (const code of ['ENOSPC', 'EDQUOT']) {
    const mapped = asNoSpace(systemError(code, '/var/lib/haven/replicas/chunks/ab/x'), 'host h3');
    assert.ok(mapped instanceof NoSpaceError, code);
    assert.match(mapped.message, /^no space left on host h3's disk \(writing \/var\/lib\/haven\/replicas/);
    assert.equal(mapped.code, 'resource_exhausted');
    assert.equal(mapped.retryable, true);
    assert.equal(statusFor(mapped), 507);
    assert.equal(exitCodeFor(mapped), 73);
  }
});

test('other errors pass through unchanged', () => {
  const other = systemError('EACCES');
  assert.equal(asNoSpace(other), other);
  assert.equal(asNoSpace('text'), 'text');
  assert.equal(asNoSpace(undefined), undefined);
});
