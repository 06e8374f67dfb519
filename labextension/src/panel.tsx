import { Clipboard, Notification, ReactWidget } from '@jupyterlab/apputils';
import { checkIcon, copyIcon, notebookIcon } from '@jupyterlab/ui-components';
import { Poll } from '@lumino/polling';
import { Message } from '@lumino/messaging';
import React, { useState } from 'react';

import { IGpu, IGpuReply, IModelServer, IServersReply, requestAPI } from './api';
import { History, Sparkline, chartSpan, spanLabel } from './sparkline';

const HISTORY_MS = 5 * 60 * 1000;
const GIB = 1024 ** 3;

function gib(bytes: number | null): string {
  return bytes === null ? '?' : `${(bytes / GIB).toFixed(1)} GiB`;
}

function percent(fraction: number): string {
  return `${Math.round(fraction * 100)} %`;
}

/** The snippet users paste into a notebook to talk to a server with LangChain. A key is
 * never shown: it is read from the server object that %qwen_serve and the control panel
 * leave in the notebook as `qwen_server`. */
export function chatSnippet(server: IModelServer): string {
  const key = server.api_key_required ? 'qwen_server.api_key' : '"EMPTY"';
  return `ChatOpenAI(base_url="${server.url}", api_key=${key}, model="${server.served_model_name}")`;
}

const CLEAN_FIGURES: [string, string][] = [
  ['torch_reserved', 'torch reserved'],
  ['torch_allocated', 'torch allocated'],
  ['rss', 'RSS']
];

/** A one-line summary of a clean report: `{before: {...}, after: {...}}` byte figures. */
function summarize(report: Record<string, any>): string {
  const { before, after } = report;
  if (!before || !after) {
    return 'done';
  }
  const parts = CLEAN_FIGURES.filter(
    ([key]) => typeof before[key] === 'number' && typeof after[key] === 'number'
  ).map(([key, label]) => `${label} ${gib(before[key])} → ${gib(after[key])}`);
  return parts.join(', ') || 'done';
}

/**
 * The left-area "Qwen" panel: GPU cards and the running model servers.
 *
 * Data comes from the jupyter_qwen server extension through a Poll that backs off
 * on errors and stands by while the panel (or the browser tab) is hidden.
 */
export class QwenPanel extends ReactWidget {
  constructor(interval = 2000) {
    super();
    this.addClass('jp-QwenPanel');
    this._poll = new Poll({
      factory: () => this._fetch(),
      frequency: { interval, backoff: true, max: 60 * 1000 },
      name: 'jupyter-qwen:refresh',
      standby: () => !this.isVisible || document.visibilityState === 'hidden'
    });
  }

  /** The refresh interval in milliseconds (from the settings). */
  set interval(ms: number) {
    this._poll.frequency = { ...this._poll.frequency, interval: ms };
  }

  /** Fetch now, and wait for it. */
  async refresh(): Promise<void> {
    await this._poll.refresh();
    await this._poll.tick;
  }

  get servers(): IModelServer[] {
    return this._servers ?? [];
  }

  async stopServer(server: IModelServer): Promise<void> {
    await this._admin(server, 'stop', () => `Stopped ${server.served_model_name}`);
  }

  async cleanServer(server: IModelServer): Promise<void> {
    await this._admin(
      server,
      'clean',
      report => `Cleaned ${server.served_model_name}: ${summarize(report)}`
    );
  }

  async stopAll(): Promise<void> {
    await Promise.all(this.servers.map(s => this.stopServer(s)));
  }

  dispose(): void {
    this._poll.dispose();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this._poll.refresh();
  }

  protected render(): JSX.Element {
    return (
      <div className="jp-QwenPanel-body">
        {this._error && <div className="jp-QwenPanel-error">{this._error}</div>}
        <GpuSection reply={this._gpus} history={this._history} now={this._now} />
        <ServerSection
          servers={this._servers}
          busy={this._busy}
          onStop={s => void this.stopServer(s)}
          onClean={s => void this.cleanServer(s)}
        />
      </div>
    );
  }

  private async _fetch(): Promise<void> {
    try {
      const [gpus, servers] = await Promise.all([
        requestAPI<IGpuReply>('gpus'),
        requestAPI<IServersReply>('servers')
      ]);
      this._now = Date.now();
      for (const gpu of gpus.gpus) {
        this._history.add(String(gpu.index), {
          t: this._now,
          memory: gpu.memory_total ? gpu.memory_used / gpu.memory_total : 0,
          util: gpu.utilization_gpu === null ? null : gpu.utilization_gpu / 100
        });
      }
      this._gpus = gpus;
      this._servers = servers.servers;
      this._error = '';
    } catch (error) {
      this._error = `Cannot reach the jupyter_qwen server extension: ${(error as Error).message}`;
      throw error; // the poll backs off
    } finally {
      this.update();
    }
  }

  private async _admin(
    server: IModelServer,
    action: 'stop' | 'clean',
    done: (report: Record<string, unknown>) => string
  ): Promise<void> {
    this._busy.add(server.id);
    this.update();
    try {
      const report = await requestAPI<Record<string, unknown>>(
        `servers/${server.id}/${action}`,
        { method: 'POST', body: '{}' }
      );
      Notification.success(done(report), { autoClose: 4000 });
    } catch (error) {
      Notification.error(`Could not ${action} ${server.served_model_name}: ${(error as Error).message}`);
    } finally {
      this._busy.delete(server.id);
      await this.refresh().catch(() => undefined);
    }
  }

  private _poll: Poll;
  private _history = new History(HISTORY_MS);
  private _now = Date.now();
  private _gpus: IGpuReply | null = null;
  private _servers: IModelServer[] | null = null;
  private _busy = new Set<string>();
  private _error = '';
}

function GpuSection(props: { reply: IGpuReply | null; history: History; now: number }) {
  const { reply } = props;
  return (
    <section className="jp-QwenPanel-section jp-QwenPanel-gpus">
      <h2 className="jp-QwenPanel-heading">GPUs</h2>
      {reply === null && <div className="jp-QwenPanel-note">Loading…</div>}
      {reply && !reply.available && (
        <div className="jp-QwenPanel-note jp-QwenPanel-gpuReason">
          No GPU information: {reply.reason}
        </div>
      )}
      {reply?.gpus.map(gpu => (
        <GpuCard
          key={gpu.index}
          gpu={gpu}
          samples={props.history.get(String(gpu.index))}
          now={props.now}
        />
      ))}
    </section>
  );
}

function GpuCard(props: { gpu: IGpu; samples: ReturnType<History['get']>; now: number }) {
  const { gpu } = props;
  const span = chartSpan(props.samples, HISTORY_MS, props.now);
  const used = gpu.memory_total ? gpu.memory_used / gpu.memory_total : 0;
  const extras = [
    gpu.utilization_gpu === null ? null : `${gpu.utilization_gpu} % busy`,
    gpu.temperature_c === null ? null : `${gpu.temperature_c} °C`
  ].filter(Boolean);
  return (
    <div className="jp-QwenCard jp-QwenGpu" data-gpu-index={gpu.index}>
      <div className="jp-QwenCard-title">
        <span>
          GPU {gpu.index} · {gpu.name}
        </span>
        <span className="jp-QwenCard-aside">{extras.join(' · ')}</span>
      </div>
      <div className="jp-QwenBar" title={percent(used)}>
        <div className="jp-QwenBar-fill" style={{ width: `${Math.round(used * 100)}%` }} />
      </div>
      <div className="jp-QwenCard-line">
        {gib(gpu.memory_used)} / {gib(gpu.memory_total)} ({percent(used)})
      </div>
      <Sparkline samples={props.samples} spanMs={span} now={props.now} />
      <div className="jp-QwenCard-legend">
        <span className="jp-QwenLegend-mem">memory</span>
        <span className="jp-QwenLegend-util">utilisation</span>
        <span>{spanLabel(span)}</span>
      </div>
      {gpu.processes.length > 0 && (
        <ul className="jp-QwenGpu-procs">
          {gpu.processes.map(p => (
            <li key={p.pid} title={`pid ${p.pid}`}>
              <span className="jp-QwenGpu-owner">
                {p.notebook_path ? (
                  <>
                    <notebookIcon.react tag="span" className="jp-QwenInlineIcon" />
                    {p.notebook_path}
                  </>
                ) : p.kernel_id ? (
                  `kernel ${p.kernel_id.slice(0, 8)}`
                ) : (
                  `pid ${p.pid}`
                )}
              </span>
              <span>{gib(p.used_memory)}</span>
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

function CopyButton(props: { text: string; label: string }) {
  const [copied, setCopied] = useState(false);
  return (
    <button
      className="jp-QwenCopy jp-Button jp-mod-minimal"
      title={copied ? 'Copied' : `Copy ${props.label}`}
      aria-label={`Copy ${props.label}`}
      onClick={() => {
        Clipboard.copyToSystem(props.text);
        setCopied(true);
        setTimeout(() => setCopied(false), 1500);
      }}
    >
      {copied ? <checkIcon.react tag="span" /> : <copyIcon.react tag="span" />}
    </button>
  );
}

function ServerSection(props: {
  servers: IModelServer[] | null;
  busy: Set<string>;
  onStop: (s: IModelServer) => void;
  onClean: (s: IModelServer) => void;
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
        <ServerCard
          key={s.id}
          server={s}
          busy={props.busy.has(s.id)}
          onStop={props.onStop}
          onClean={props.onClean}
        />
      ))}
    </section>
  );
}

function ServerCard(props: {
  server: IModelServer;
  busy: boolean;
  onStop: (s: IModelServer) => void;
  onClean: (s: IModelServer) => void;
}) {
  const { server, busy } = props;
  const e = server.engine;
  const snippet = chatSnippet(server);
  return (
    <div className="jp-QwenCard jp-QwenServer" data-server-id={server.id}>
      <div className="jp-QwenCard-title">
        <span className="jp-QwenServer-model" title={server.model}>
          {server.served_model_name}
        </span>
        <span className={`jp-QwenStatus jp-QwenStatus-${server.status}`} title={server.health_error ?? ''}>
          {server.status}
        </span>
      </div>
      <div className="jp-QwenCard-line jp-QwenServer-notebook">
        {server.notebook_path ? (
          <>
            <notebookIcon.react tag="span" className="jp-QwenInlineIcon" />
            {server.notebook_path}
          </>
        ) : server.kernel_id ? (
          `kernel ${server.kernel_id.slice(0, 8)} (not a notebook of this server)`
        ) : (
          `pid ${server.pid}, outside a notebook`
        )}
      </div>
      <div className="jp-QwenCard-row">
        <code className="jp-QwenServer-url">{server.url}</code>
        <CopyButton text={server.url} label="URL" />
      </div>
      {e && (
        <div className="jp-QwenCard-line jp-QwenServer-stats">
          {e.requests_running} running · {e.requests_waiting} waiting ·{' '}
          {e.generation_tokens_per_s.toFixed(0)} tok/s · KV {percent(e.kv_cache_usage)}
        </div>
      )}
      <div className="jp-QwenCard-row">
        <code className="jp-QwenServer-snippet">{snippet}</code>
        <CopyButton text={snippet} label="LangChain snippet" />
      </div>
      <div className="jp-QwenCard-actions">
        <button
          className="jp-QwenServer-clean jp-mod-styled"
          disabled={busy}
          title="Free cached GPU memory in this server's kernel"
          onClick={() => props.onClean(server)}
        >
          Clean
        </button>
        <button
          className="jp-QwenServer-stop jp-mod-styled jp-mod-warn"
          disabled={busy}
          title="Stop this server and release its GPU memory"
          onClick={() => props.onStop(server)}
        >
          Stop
        </button>
      </div>
    </div>
  );
}
