/**
 * The operator's dashboard: hosts, containers and their protection, a live
 * event feed, a timeline of failovers, switchovers and migrations, charts
 * per container, and the operator's actions behind a confirmation. One
 * page, polling `GET /v1/hosts` and `GET /v1/containers` every second and
 * following the event stream; bundled by esbuild into dist/ui/app.js.
 */
import { render, type ComponentChildren } from 'preact';
import { useCallback, useEffect, useState } from 'preact/hooks';
import { ApiError, followEvents, getJson, getSession, postJson, type SessionInfo } from './api.js';
import {
  replicatedMode,
  addOperation,
  describeEvent,
  formatBytes,
  formatEpoch,
  formatMs,
  MAX_EVENTS,
  recordSamples,
  type ClusterEvent,
  type ContainerView,
  type EpochSample,
  type HostView,
  type Operation,
} from './model.js';

const POLL_MS = 1000;

/** An action waiting for the operator's confirmation. */
interface PendingAction {
  title: string;
  body: ComponentChildren;
  confirm: string;
  run: () => Promise<string>;
}

/** A line of feedback after an action. */
interface Notice {
  id: number;
  ok: boolean;
  text: string;
}

let noticeIds = 0;

function App(): ComponentChildren {
  const [session, setSession] = useState<SessionInfo | null>(null);
  const [loginError, setLoginError] = useState<string | null>(null);
  const [hosts, setHosts] = useState<HostView[]>([]);
  const [containers, setContainers] = useState<ContainerView[]>([]);
  const [pollError, setPollError] = useState<string | null>(null);
  const [events, setEvents] = useState<ClusterEvent[]>([]);
  const [operations, setOperations] = useState<Operation[]>([]);
  const [history, setHistory] = useState<Map<string, EpochSample[]>>(new Map());
  const [selected, setSelected] = useState<string | null>(null);
  const [connected, setConnected] = useState(false);
  const [pending, setPending] = useState<PendingAction | null>(null);
  const [running, setRunning] = useState<string[]>([]);
  const [notices, setNotices] = useState<Notice[]>([]);

  const lostSession = useCallback((error: unknown): boolean => {
    if (error instanceof ApiError && error.status === 401) {
      setSession(null);
      setLoginError('Your session has ended.');
      return true;
    }
    return false;
  }, []);

  useEffect(() => {
    getSession().then(setSession, (error: unknown) =>
      setLoginError(error instanceof ApiError && error.status === 401 ? null : String(error)),
    );
  }, []);

  // Polling: hosts and containers every second; each poll adds a chart sample per new epoch.
  useEffect(() => {
    if (!session) return undefined;
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const poll = async (): Promise<void> => {
      try {
        const [h, c] = await Promise.all([
          getJson<HostView[]>('/v1/hosts'),
          getJson<ContainerView[]>('/v1/containers'),
        ]);
        if (stopped) return;
        setHosts(h);
        setContainers(c);
        setHistory((old) => recordSamples(old, c, Date.now()));
        setPollError(null);
      } catch (error) {
        if (lostSession(error)) return;
        setPollError(error instanceof Error ? error.message : String(error));
      }
      if (!stopped) timer = setTimeout(() => void poll(), POLL_MS);
    };
    void poll();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [session, lostSession]);

  // The event stream, from the beginning: the timeline is rebuilt from past operations too.
  useEffect(() => {
    if (!session) return undefined;
    return followEvents(
      0,
      (event) => {
        setEvents((old) => [event, ...old].slice(0, MAX_EVENTS));
        setOperations((old) => addOperation(old, event));
      },
      setConnected,
    );
  }, [session]);

  const notify = (ok: boolean, text: string): void => {
    const id = ++noticeIds;
    setNotices((old) => [{ id, ok, text }, ...old].slice(0, 5));
    setTimeout(() => setNotices((old) => old.filter((n) => n.id !== id)), ok ? 8000 : 20000);
  };

  const act = (key: string, action: PendingAction): void => {
    setPending({
      ...action,
      run: async () => {
        setRunning((old) => [...old, key]);
        try {
          const text = await action.run();
          notify(true, text);
          return text;
        } catch (error) {
          if (!lostSession(error))
            notify(false, `${action.title}: ${error instanceof Error ? error.message : String(error)}`);
          throw error;
        } finally {
          setRunning((old) => old.filter((k) => k !== key));
        }
      },
    });
  };

  if (!session) return <Login error={loginError} />;
  const csrf = session.csrf;
  const upHosts = hosts.filter((h) => h.state === 'up' && !h.cordoned).map((h) => h.name);
  const chosen =
    containers.find((c) => c.name === selected) ?? containers.find((c) => replicatedMode(c.protection.mode));

  return (
    <div class="page">
      <header>
        <h1>Haven</h1>
        <span class="summary">
          {hosts.filter((h) => h.state === 'up').length}/{hosts.length} hosts up ·{' '}
          {containers.filter((c) => c.state === 'running').length}/{containers.length} containers running
        </span>
        <span class={`conn ${connected ? 'ok' : 'bad'}`} id="stream-state">
          {connected ? 'live' : 'reconnecting…'}
        </span>
        {pollError && <span class="bad">controller: {pollError}</span>}
        <span class="session">session until {new Date(session.expiresAt).toLocaleTimeString()}</span>
      </header>
      <div class="notices">
        {notices.map((n) => (
          <div key={n.id} class={`notice ${n.ok ? 'ok' : 'bad'}`} role="status">
            {n.text}
          </div>
        ))}
      </div>
      <main>
        <section id="hosts">
          <h2>Hosts</h2>
          <HostsTable
            hosts={hosts}
            running={running}
            onCordon={(h, cordon) =>
              act(`host:${h.name}`, {
                title: `${cordon ? 'Cordon' : 'Uncordon'} ${h.name}`,
                body: cordon ? (
                  <p>{h.name} takes no new containers; those on it stay.</p>
                ) : (
                  <p>{h.name} takes containers again.</p>
                ),
                confirm: cordon ? 'Cordon' : 'Uncordon',
                run: async () => {
                  await postJson(
                    `/v1/hosts/${encodeURIComponent(h.name)}/${cordon ? 'cordon' : 'uncordon'}`,
                    csrf,
                  );
                  return `${h.name} ${cordon ? 'cordoned' : 'uncordoned'}`;
                },
              })
            }
            onDrain={(h) =>
              act(`host:${h.name}`, {
                title: `Drain ${h.name}`,
                body: (
                  <p>
                    {h.name} is cordoned, then each of its {h.containers} containers migrates live to the host
                    placement chooses, one at a time.
                  </p>
                ),
                confirm: 'Drain',
                run: async () => {
                  const r = await postJson<{
                    migrated: unknown[];
                    failed: Array<{ name: string; error: string }>;
                  }>(`/v1/hosts/${encodeURIComponent(h.name)}/drain`, csrf);
                  const failed = r.failed.map((f) => `${f.name}: ${f.error}`).join('; ');
                  return `${h.name} drained: ${r.migrated.length} migrated${failed ? `, failed: ${failed}` : ''}`;
                },
              })
            }
          />
        </section>
        <section id="containers">
          <h2>Containers</h2>
          <ContainersTable
            containers={containers}
            upHosts={upHosts}
            running={running}
            selected={chosen?.name ?? null}
            onSelect={setSelected}
            onMigrate={(c, to) =>
              act(`container:${c.name}`, {
                title: `Migrate ${c.name}`,
                body: (
                  <p>
                    {c.name} moves live from {c.host ?? '?'} to {to ?? 'the host placement chooses'}: it
                    pauses briefly, keeps its address and its TCP connections.
                  </p>
                ),
                confirm: 'Migrate',
                run: async () => {
                  const r = await postJson<{ to: string; downtimeMs: number; strategy: string }>(
                    `/v1/containers/${encodeURIComponent(c.name)}/migrate`,
                    csrf,
                    to ? { to } : {},
                  );
                  return `${c.name} migrated to ${r.to} (${r.strategy}, downtime ${formatMs(r.downtimeMs)})`;
                },
              })
            }
            onSwitchover={(c) =>
              act(`container:${c.name}`, {
                title: `Switch ${c.name} over`,
                body: (
                  <p>
                    {c.name} stops in a final epoch on {c.host ?? '?'} and is restored on its backup{' '}
                    {c.protection.backup ?? '?'} with its connections; no acknowledged write is lost.
                  </p>
                ),
                confirm: 'Switch over',
                run: async () => {
                  const r = await postJson<{ to: string; totalMs: number }>(
                    `/v1/containers/${encodeURIComponent(c.name)}/failover`,
                    csrf,
                  );
                  return `${c.name} switched over to ${r.to} in ${formatMs(r.totalMs)}`;
                },
              })
            }
          />
        </section>
        <section id="timeline">
          <h2>Timeline: failovers, switchovers, migrations</h2>
          <Timeline operations={operations} />
        </section>
        <section id="charts">
          <h2>Epochs{chosen ? `: ${chosen.name}` : ''}</h2>
          {chosen ? (
            <Charts
              container={chosen}
              samples={history.get(chosen.name) ?? []}
              migration={operations.find(
                (o) => o.kind === 'migration' && o.ok && o.container === chosen.name,
              )}
            />
          ) : (
            <p class="muted">No container yet.</p>
          )}
        </section>
        <section id="events">
          <h2>Events</h2>
          <EventFeed events={events} />
        </section>
      </main>
      {pending && <Confirm action={pending} onClose={() => setPending(null)} />}
    </div>
  );
}

function Login(props: { error: string | null }): ComponentChildren {
  return (
    <div class="login">
      <h1>Haven</h1>
      <p>{props.error ?? 'You are not logged in.'}</p>
      <p>
        Run <code>haven dashboard</code> on the controller's machine (or <code>haven lab status --json</code>{' '}
        in the lab) and open the URL it prints: it logs you in once.
      </p>
    </div>
  );
}

function Badge(props: { value: string }): ComponentChildren {
  const tone = /^(up|running|healthy|committed)$/.test(props.value)
    ? 'ok'
    : /^(down|lost|exited|unhealthy|failed)$/.test(props.value)
      ? 'bad'
      : 'warn';
  return <span class={`badge ${tone}`}>{props.value}</span>;
}

function HostsTable(props: {
  hosts: HostView[];
  running: string[];
  onCordon: (h: HostView, cordon: boolean) => void;
  onDrain: (h: HostView) => void;
}): ComponentChildren {
  if (props.hosts.length === 0) return <p class="muted">No host has registered.</p>;
  return (
    <table>
      <thead>
        <tr>
          <th>host</th>
          <th>state</th>
          <th title="the failure detector's suspicion now (suspected at 8)">φ</th>
          <th title="the silence after which this host would be suspected">suspect after</th>
          <th>last beat</th>
          <th>containers</th>
          <th>cpu</th>
          <th>memory</th>
          <th>labels</th>
          <th />
        </tr>
      </thead>
      <tbody>
        {props.hosts.map((h) => {
          const busy = props.running.includes(`host:${h.name}`);
          return (
            <tr key={h.name} data-host={h.name}>
              <td class="name">{h.name}</td>
              <td>
                <Badge value={h.state} />
                {h.cordoned && <span class="badge warn">cordoned</span>}
              </td>
              <td class="num">{h.phi === null ? '–' : h.phi.toFixed(2)}</td>
              <td class="num">{formatMs(h.suspectAfterMs)}</td>
              <td class="num">{h.lastSeenMs === null ? '–' : `${formatMs(h.lastSeenMs)} ago`}</td>
              <td class="num">{h.containers}</td>
              <td class="num">{(h.cpuMillis / 1000).toFixed(1)}</td>
              <td class="num">{formatBytes(h.memoryBytes)}</td>
              <td class="muted">
                {Object.entries(h.labels)
                  .map(([k, v]) => `${k}=${v}`)
                  .join(' ')}
              </td>
              <td class="actions">
                <button disabled={busy} onClick={() => props.onCordon(h, !h.cordoned)}>
                  {h.cordoned ? 'Uncordon' : 'Cordon'}
                </button>
                <button disabled={busy || h.state !== 'up'} onClick={() => props.onDrain(h)}>
                  Drain…
                </button>
              </td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}

function ContainersTable(props: {
  containers: ContainerView[];
  upHosts: string[];
  running: string[];
  selected: string | null;
  onSelect: (name: string) => void;
  onMigrate: (c: ContainerView, to: string | undefined) => void;
  onSwitchover: (c: ContainerView) => void;
}): ComponentChildren {
  const [targets, setTargets] = useState<Record<string, string>>({});
  if (props.containers.length === 0) return <p class="muted">No container runs in the cluster.</p>;
  return (
    <table>
      <thead>
        <tr>
          <th>container</th>
          <th>host</th>
          <th>state</th>
          <th>protection</th>
          <th>backup</th>
          <th title="the newest epoch the backup holds: when its checkpoint began (UTC)">committed epoch</th>
          <th>its age</th>
          <th title="data a failover now would lose at most: the epoch's age plus one interval">RPO</th>
          <th>freeze</th>
          <th>ip</th>
          <th />
        </tr>
      </thead>
      <tbody>
        {props.containers.map((c) => {
          const p = c.protection;
          const busy = props.running.includes(`container:${c.name}`);
          const choices = props.upHosts.filter((h) => h !== c.host);
          const target = targets[c.name] ?? '';
          return (
            <tr
              key={c.name}
              data-container={c.name}
              class={props.selected === c.name ? 'selected' : ''}
              onClick={() => props.onSelect(c.name)}
            >
              <td class="name">{c.name}</td>
              <td class="host">{c.host ?? '–'}</td>
              <td>
                <Badge value={c.state} />
                {c.health && <Badge value={c.health} />}
              </td>
              <td>
                {p.mode}
                {replicatedMode(p.mode) && <span class="muted"> / {formatMs(p.intervalMs)}</span>}
                {p.output && (
                  <span class={p.output.mode === 'held' ? 'muted' : 'badge bad'}>
                    {' '}
                    output{' '}
                    {p.output.mode === 'held' ? `held ${formatMs(p.output.outputDelayMs)}` : 'not held'}
                  </span>
                )}
                {p.lastError && (
                  <span class="badge bad" title={p.lastError}>
                    error
                  </span>
                )}
              </td>
              <td>{p.backup ?? '–'}</td>
              <td class="num" title={p.committedEpoch === null ? '' : `epoch ${p.committedEpoch}`}>
                {formatEpoch(p.committedEpoch)}
              </td>
              <td class="num">{formatMs(p.committedAgeMs)}</td>
              <td class="num">{formatMs(p.rpoMs)}</td>
              <td class="num">{formatMs(p.frozenMs)}</td>
              <td class="muted">{c.ip}</td>
              <td class="actions" onClick={(e) => e.stopPropagation()}>
                <select
                  aria-label={`destination of ${c.name}`}
                  value={target}
                  disabled={busy}
                  onChange={(e) => {
                    const value = (e.target as HTMLSelectElement).value;
                    setTargets((old) => ({ ...old, [c.name]: value }));
                  }}
                >
                  <option value="">auto</option>
                  {choices.map((h) => (
                    <option key={h} value={h}>
                      {h}
                    </option>
                  ))}
                </select>
                <button
                  class="migrate"
                  disabled={busy || c.desired !== 'running' || !c.host}
                  onClick={() => props.onMigrate(c, target || undefined)}
                >
                  Migrate…
                </button>
                <button
                  class="switchover"
                  disabled={busy || !replicatedMode(p.mode) || !p.backup || p.committedEpoch === null}
                  onClick={() => props.onSwitchover(c)}
                >
                  Switch over…
                </button>
              </td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}

const SEGMENT_NAMES: Record<string, string> = {
  detection: 'detection',
  decision: 'decision + order',
  'pre-copy': 'prepare + rounds',
  handover: 'final epoch',
  transfer: 'final round',
  assemble: 'assemble',
  restore: 'restore',
};

function Timeline(props: { operations: Operation[] }): ComponentChildren {
  if (props.operations.length === 0) return <p class="muted">No failover, switchover or migration yet.</p>;
  const longest = Math.max(1, ...props.operations.map((o) => o.endedAt - o.startedAt));
  const width = 600;
  const scale = (ms: number): number => (ms / longest) * width;
  return (
    <div>
      <div class="legend">
        {Object.entries(SEGMENT_NAMES).map(([key, text]) => (
          <span key={key}>
            <svg width="10" height="10" aria-hidden="true">
              <rect class={`seg ${key}`} width="10" height="10" />
            </svg>
            {text}
          </span>
        ))}
      </div>
      <ol class="timeline">
        {props.operations.map((o) => (
          <li
            key={o.seq}
            class={`op ${o.kind} ${o.ok ? 'ok' : 'failed'}`}
            data-op={o.kind}
            data-container={o.container}
          >
            <div class="op-head">
              <strong>{o.kind}</strong> {o.container} {o.from} → {o.to}{' '}
              <span class="muted">{new Date(o.endedAt).toLocaleTimeString()}</span>
              {o.downtimeMs !== null && <span class="downtime">unavailable {formatMs(o.downtimeMs)}</span>}
            </div>
            {o.segments.length > 0 && (
              <svg class="bar" viewBox={`0 0 ${width} 16`} preserveAspectRatio="none" role="img">
                {o.segments
                  .filter((s) => s.durationMs > 0)
                  .map((s) => (
                    <rect
                      key={s.label}
                      class={`seg ${s.label}`}
                      x={scale(s.startMs)}
                      width={Math.max(1, scale(s.durationMs))}
                      height="16"
                    >
                      <title>
                        {SEGMENT_NAMES[s.label]}: {formatMs(s.durationMs)}
                      </title>
                    </rect>
                  ))}
              </svg>
            )}
            <div class="op-detail">
              {o.segments
                .filter((s) => s.durationMs > 0)
                .map((s) => `${SEGMENT_NAMES[s.label] ?? s.label} ${formatMs(s.durationMs)}`)
                .join(' · ')}
              {o.segments.length > 0 ? ' — ' : ''}
              {o.detail}
            </div>
          </li>
        ))}
      </ol>
    </div>
  );
}

function BarChart(props: {
  title: string;
  values: number[];
  labels: string[];
  format: (v: number) => string;
}): ComponentChildren {
  const width = 360;
  const height = 90;
  const max = Math.max(1e-9, ...props.values);
  // At least 30 slots: a few samples look like bars, not blocks.
  const bar = width / Math.max(30, props.values.length);
  const last = props.values[props.values.length - 1];
  return (
    <figure class="chart">
      <figcaption>
        {props.title}
        <span class="muted">
          {' '}
          {last === undefined ? 'no sample yet' : `last ${props.format(last)}, max ${props.format(max)}`}
        </span>
      </figcaption>
      <svg viewBox={`0 0 ${width} ${height}`} preserveAspectRatio="none" role="img">
        {props.values.map((v, i) => (
          <rect
            key={i}
            x={i * bar + 0.5}
            y={height - (v / max) * height}
            width={Math.max(1, bar - 1)}
            height={(v / max) * height}
          >
            <title>
              {props.labels[i]}: {props.format(v)}
            </title>
          </rect>
        ))}
      </svg>
    </figure>
  );
}

function Charts(props: {
  container: ContainerView;
  samples: EpochSample[];
  migration: Operation | undefined;
}): ComponentChildren {
  const { samples, migration, container } = props;
  const labels = samples.map((s) => `epoch ${s.epoch}`);
  return (
    <div class="charts">
      {!replicatedMode(container.protection.mode) && (
        <p class="muted">{container.name} is not checkpoint-protected: it has no epochs.</p>
      )}
      <BarChart
        title="freeze per epoch"
        values={samples.map((s) => s.frozenMs)}
        labels={labels}
        format={formatMs}
      />
      <BarChart
        title="bytes sent per epoch"
        values={samples.map((s) => s.sentBytes)}
        labels={labels}
        format={formatBytes}
      />
      <BarChart
        title="checkpoint size"
        values={samples.map((s) => s.totalBytes)}
        labels={labels}
        format={formatBytes}
      />
      {migration && migration.rounds.length > 0 && (
        <BarChart
          title={`last migration: bytes sent per pre-copy round`}
          values={migration.rounds.map((r) => r.sentBytes)}
          labels={migration.rounds.map((r) => `round ${r.round} (frozen ${formatMs(r.frozenMs)})`)}
          format={formatBytes}
        />
      )}
      <p class="muted small">
        Sampled epochs (the page polls every second; agents report about once a second), kept in this page
        only.
      </p>
    </div>
  );
}

function EventFeed(props: { events: ClusterEvent[] }): ComponentChildren {
  if (props.events.length === 0) return <p class="muted">No event yet.</p>;
  return (
    <ol class="feed">
      {props.events.map((e) => (
        <li key={e.seq} data-kind={e.kind}>
          <span class="muted">{new Date(e.at).toLocaleTimeString()}</span>{' '}
          <span
            class={`kind ${e.kind.split('.')[0] ?? ''} ${/failed|down|lost|crash|damaged|fenced/.test(e.kind) ? 'bad' : ''}`}
          >
            {e.kind}
          </span>{' '}
          <strong>{e.subject}</strong> <span class="muted">{describeEvent(e)}</span>
        </li>
      ))}
    </ol>
  );
}

function Confirm(props: { action: PendingAction; onClose: () => void }): ComponentChildren {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  return (
    <div class="modal" role="dialog" aria-modal="true" aria-labelledby="confirm-title">
      <div class="dialog">
        <h3 id="confirm-title">{props.action.title}?</h3>
        {props.action.body}
        {error && <p class="bad">{error}</p>}
        <div class="buttons">
          <button class="cancel" disabled={busy} onClick={props.onClose}>
            Cancel
          </button>
          <button
            class="confirm danger"
            disabled={busy}
            onClick={() => {
              setBusy(true);
              props.action.run().then(props.onClose, (e: unknown) => {
                setBusy(false);
                setError(e instanceof Error ? e.message : String(e));
              });
            }}
          >
            {busy ? 'Working…' : props.action.confirm}
          </button>
        </div>
      </div>
    </div>
  );
}

const root = document.getElementById('app');
if (root) render(<App />, root);
