/**
 * The page's calls to the controller: the ordinary `/v1` API with the
 * session cookie (the browser sends it; the page never sees it) and, on
 * requests that change something, the session's CSRF token in a header.
 * Everything goes to the page's own origin: nothing else is allowed by
 * the controller's Content-Security-Policy anyway.
 */
import { parseSse, type ClusterEvent } from './model.js';

/** The header that carries the CSRF token (the controller's `CSRF_HEADER`). */
const CSRF_HEADER = 'x-haven-csrf';

/** An API call that failed: the controller's message and status. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** The session, as `GET /ui/session` answers. */
export interface SessionInfo {
  csrf: string;
  expiresAt: string;
}

async function failure(res: Response): Promise<ApiError> {
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = (await res.json()) as { error?: unknown };
    if (typeof body.error === 'string') message = body.error;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(res.status, message);
}

/** The session's CSRF token and expiry; an {@link ApiError} 401 when not logged in. */
export async function getSession(): Promise<SessionInfo> {
  const res = await fetch('/ui/session', { credentials: 'same-origin', cache: 'no-store' });
  if (!res.ok) throw await failure(res);
  return (await res.json()) as SessionInfo;
}

/** `GET path` as JSON. */
export async function getJson<T>(path: string): Promise<T> {
  const res = await fetch(path, { credentials: 'same-origin', cache: 'no-store' });
  if (!res.ok) throw await failure(res);
  return (await res.json()) as T;
}

/** `POST path` with a JSON body and the CSRF header. */
export async function postJson<T>(path: string, csrf: string, body: unknown = {}): Promise<T> {
  const res = await fetch(path, {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'content-type': 'application/json', [CSRF_HEADER]: csrf },
    body: JSON.stringify(body),
  });
  if (!res.ok) throw await failure(res);
  return (await res.json()) as T;
}

/**
 * Follows `GET /v1/events?follow=true` from `since`, calling `onEvent` for
 * each, and reconnects after a dropped stream (a restarted controller)
 * from the last seq seen, so nothing is missed or repeated. Returns a
 * function that stops it. EventSource is not used: it offers no way to
 * receive events of every kind (each is sent under its kind's name) nor to
 * resume by a query parameter.
 */
export function followEvents(
  since: number,
  onEvent: (event: ClusterEvent) => void,
  onState: (connected: boolean) => void,
): () => void {
  let last = since;
  let stopped = false;
  let controller: AbortController | undefined;
  const run = async (): Promise<void> => {
    while (!stopped) {
      controller = new AbortController();
      try {
        const res = await fetch(`/v1/events?follow=true&since=${last}`, {
          credentials: 'same-origin',
          signal: controller.signal,
          headers: { accept: 'text/event-stream' },
        });
        if (!res.ok || !res.body) throw await failure(res);
        onState(true);
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const parsed = parseSse(buffer + value);
          buffer = parsed.rest;
          for (const text of parsed.data) {
            const event = JSON.parse(text) as ClusterEvent;
            if (event.seq <= last) continue;
            last = event.seq;
            onEvent(event);
          }
        }
      } catch {
        // dropped, refused or aborted: retry below unless stopped
      }
      onState(false);
      if (!stopped) await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  };
  void run();
  return () => {
    stopped = true;
    controller?.abort();
  };
}
