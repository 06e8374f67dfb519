import React from 'react';

import { IModelServer } from './api';
import { CardBoundary } from './boundary';
import { Connect } from './connect';
import { LatencyFigures, MemoryFigures, NOT_REPORTED, RunningRequests } from './figures';
import { MISSING, formatDuration, formatNumber, formatPercent } from './format';
import { NotebookLink, OpenNotebook } from './notebook';

/** What a card can ask the panel to do. */
export interface IServerActions {
  busy: Set<string>; // server ids with a stop or clean under way
  aborting: Set<string>; // request ids with an abort under way
  onStop: (s: IModelServer) => void;
  onClean: (s: IModelServer) => void;
  onAbort: (s: IModelServer, requestId: string) => void;
  open: OpenNotebook;
}

/** Seconds the server has been up: its own figure, else from its record's start time. */
export function uptime(server: IModelServer, now: number): number | null {
  if (server.uptime !== null && server.uptime !== undefined) {
    return server.uptime;
  }
  return server.started_at ? Math.max(0, now / 1000 - server.started_at) : null;
}

function Owner(props: { server: IModelServer; open: OpenNotebook }) {
  const { server } = props;
  return (
    <div className="jp-QwenCard-line jp-QwenServer-notebook">
      {server.notebook_path ? (
        <NotebookLink path={server.notebook_path} open={props.open} />
      ) : server.origin === 'remote' ? (
        `remote server at ${server.root_url}`
      ) : server.kernel_id ? (
        `kernel ${server.kernel_id.slice(0, 8)} (not a notebook of this server)`
      ) : (
        `pid ${server.pid}, outside a notebook`
      )}
    </div>
  );
}

/** device · up 12 min · variant hybrid */
function Facts(props: { server: IModelServer; now: number }) {
  const { server } = props;
  const device = server.engine?.memory?.device ?? server.device;
  return (
    <div className="jp-QwenCard-line jp-QwenServer-facts">
      <span className="jp-QwenServer-device">{device ?? `device ${NOT_REPORTED}`}</span>
      {' · '}
      <span className="jp-QwenServer-uptime">up {formatDuration(uptime(server, props.now))}</span>
      {' · '}
      <span className="jp-QwenServer-variant">
        {server.engine?.chat_variant ? `chat ${server.engine.chat_variant}` : `chat variant ${MISSING}`}
      </span>
    </div>
  );
}

function Loading(props: { server: IModelServer }) {
  const fraction = props.server.loading?.fraction ?? null;
  const phase = props.server.loading?.phase ?? 'loading';
  return (
    <div className="jp-QwenServer-loading">
      <div className="jp-QwenCard-line">
        {phase} {fraction === null ? '' : `(${formatPercent(fraction, 0)})`}
      </div>
      <div
        className={`jp-QwenBar${fraction === null ? ' jp-mod-indeterminate' : ''}`}
        role="progressbar"
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={fraction === null ? undefined : Math.round(100 * fraction)}
      >
        <div className="jp-QwenBar-fill" style={{ width: `${100 * (fraction ?? 1)}%` }} />
      </div>
    </div>
  );
}

/** A failed, dead or unreachable server: why, in one line, what to do, and the whole text. */
function Failure(props: { server: IModelServer }) {
  const { server } = props;
  const error = server.error ?? server.health_error ?? `the server reports "${server.status}" without a reason`;
  return (
    <div className="jp-QwenServer-failure" role="alert">
      <div className="jp-QwenServer-error">{error}</div>
      {server.hint && <div className="jp-QwenServer-hint">{server.hint}</div>}
      {server.error_detail && (
        <details className="jp-QwenServer-detail">
          <summary>Full error</summary>
          <pre>{server.error_detail}</pre>
        </details>
      )}
    </div>
  );
}

/** 2 running · 1 waiting · 874 tok/s · KV 25 % */
function Stats(props: { server: IModelServer }) {
  const e = props.server.engine;
  return (
    <div className="jp-QwenCard-line jp-QwenServer-stats">
      <span className="jp-QwenNowrap">{formatNumber(e?.requests_running, 0)} running</span> ·{' '}
      <span className="jp-QwenNowrap">{formatNumber(e?.requests_waiting, 0)} waiting</span> ·{' '}
      <span className="jp-QwenNowrap">{formatNumber(e?.generation_tokens_per_s, 0)} tok/s</span> ·{' '}
      <span className="jp-QwenNowrap">KV {formatPercent(e?.kv_cache_usage, 0)}</span>
    </div>
  );
}

function Ready(props: { server: IModelServer; actions: IServerActions }) {
  const { server, actions } = props;
  const e = server.engine;
  return (
    <>
      <Stats server={server} />
      <h3 className="jp-QwenCard-subheading">Memory</h3>
      <MemoryFigures memory={e?.memory} />
      <h3 className="jp-QwenCard-subheading">Latency</h3>
      <LatencyFigures latency={e?.latency} />
      <RunningRequests
        running={e?.running}
        aborting={actions.aborting}
        onAbort={server.origin === 'remote' ? null : requestId => actions.onAbort(server, requestId)}
      />
    </>
  );
}

function StateBody(props: { server: IModelServer; actions: IServerActions }) {
  switch (props.server.status) {
    case 'loading':
      return <Loading server={props.server} />;
    case 'ok':
      return <Ready server={props.server} actions={props.actions} />;
    case 'stopping':
    case 'stopped':
      return <div className="jp-QwenCard-line">{props.server.status}…</div>;
    default: // failed, dead, unreachable
      return <Failure server={props.server} />;
  }
}

const CLEANABLE = new Set(['ok', 'failed', 'dead']);

/** Stop, then Clean: the order of every jupyter_qwen view. Remote servers are not ours. */
function Actions(props: { server: IModelServer; actions: IServerActions }) {
  const { server, actions } = props;
  if (server.origin === 'remote') {
    return null;
  }
  const busy = actions.busy.has(server.id);
  return (
    <div className="jp-QwenCard-actions">
      <button
        className="jp-QwenServer-stop jp-mod-styled jp-mod-warn"
        disabled={busy}
        title="Stop this server and release its memory"
        onClick={() => actions.onStop(server)}
      >
        Stop
      </button>
      <button
        className="jp-QwenServer-clean jp-mod-styled"
        disabled={busy || !CLEANABLE.has(server.status)}
        title="Free cached GPU memory in this server's process"
        onClick={() => actions.onClean(server)}
      >
        Clean
      </button>
    </div>
  );
}

function ServerCard(props: { server: IModelServer; now: number; actions: IServerActions }) {
  const { server } = props;
  return (
    <div
      className={`jp-QwenCard jp-QwenServer jp-QwenServer-${server.status}`}
      data-server-id={server.id}
      data-status={server.status}
    >
      <div className="jp-QwenCard-title">
        <span className="jp-QwenServer-model" title={server.model}>
          {server.served_model_name}
        </span>
        <span className="jp-QwenCard-badges">
          {server.origin === 'remote' && <span className="jp-QwenBadge jp-QwenBadge-remote">remote</span>}
          <span className={`jp-QwenStatus jp-QwenStatus-${server.status}`} title={server.health_error ?? ''}>
            {server.status}
          </span>
        </span>
      </div>
      <Owner server={server} open={props.actions.open} />
      <Facts server={server} now={props.now} />
      <StateBody server={server} actions={props.actions} />
      {(server.status === 'ok' || server.status === 'loading') && <Connect server={server} />}
      <Actions server={server} actions={props.actions} />
    </div>
  );
}

export function ServerSection(props: {
  servers: IModelServer[] | null;
  now: number;
  actions: IServerActions;
}) {
  const { servers } = props;
  return (
    <section className="jp-QwenPanel-section jp-QwenPanel-servers">
      <h2 className="jp-QwenPanel-heading">Servers{servers?.length ? ` (${servers.length})` : ''}</h2>
      {servers === null && <div className="jp-QwenPanel-note">Loading…</div>}
      {servers?.length === 0 && (
        <div className="jp-QwenPanel-note jp-QwenPanel-noServers">
          No model server is running. Start one in a notebook: <code>%qwen_serve Qwen/Qwen3-0.6B</code>
        </div>
      )}
      {servers?.map(s => (
        <CardBoundary key={s.id} what={`server ${s.served_model_name}`}>
          <ServerCard server={s} now={props.now} actions={props.actions} />
        </CardBoundary>
      ))}
    </section>
  );
}
