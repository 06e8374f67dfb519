import { Notification, ReactWidget } from '@jupyterlab/apputils';
import { Poll } from '@lumino/polling';
import { Message } from '@lumino/messaging';
import React from 'react';

import { IGpuReply, IModelServer, IServersReply, requestAPI } from './api';
import { formatBytes } from './format';
import { GpuSection, HISTORY_MS } from './gpus';
import { OpenNotebook } from './notebook';
import { IServerActions, ServerSection } from './servers';
import { History } from './sparkline';

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
  ).map(([key, label]) => `${label} ${formatBytes(before[key])} → ${formatBytes(after[key])}`);
  return parts.join(', ') || 'done';
}

/**
 * The left-area "Qwen" panel: GPU cards and the running model servers.
 *
 * Data comes from the jupyter_qwen server extension through a Poll that backs off
 * on errors and stands by while the panel (or the browser tab) is hidden.
 */
export class QwenPanel extends ReactWidget {
  /**
   * `open` opens a notebook by its path. The poll runs while the panel is hidden too (the
   * status-bar item reads it), and stands by while the browser tab is hidden.
   */
  constructor(open: OpenNotebook, interval = 2000) {
    super();
    this.addClass('jp-QwenPanel');
    this._open = open;
    this._poll = new Poll({
      factory: () => this._fetch(),
      frequency: { interval, backoff: true, max: 60 * 1000 },
      name: 'jupyter-qwen:refresh',
      standby: () => document.visibilityState === 'hidden'
    });
  }

  /** Call `listener` after every refresh (the status-bar item). */
  onRefresh(listener: () => void): void {
    this._listeners.push(listener);
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

  /** End one running request of a server (the model server's /admin/abort). */
  async abortRequest(server: IModelServer, requestId: string): Promise<void> {
    this._aborting.add(requestId);
    this.update();
    try {
      await requestAPI(`servers/${server.id}/abort`, {
        method: 'POST',
        body: JSON.stringify({ request_id: requestId })
      });
      Notification.success(`Aborted request ${requestId} of ${server.served_model_name}`, {
        autoClose: 4000
      });
    } catch (error) {
      Notification.error(`Could not abort ${requestId}: ${(error as Error).message}`);
    } finally {
      this._aborting.delete(requestId);
      await this.refresh().catch(() => undefined);
    }
  }

  async stopAll(): Promise<void> {
    const ours = this.servers.filter(s => s.origin !== 'remote');
    await Promise.all(ours.map(s => this.stopServer(s)));
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
    const actions: IServerActions = {
      busy: this._busy,
      aborting: this._aborting,
      onStop: s => void this.stopServer(s),
      onClean: s => void this.cleanServer(s),
      onAbort: (s, requestId) => void this.abortRequest(s, requestId),
      open: this._open
    };
    return (
      <div className="jp-QwenPanel-body">
        {this._error && <div className="jp-QwenPanel-error">{this._error}</div>}
        <GpuSection
          reply={this._gpus}
          servers={this.servers}
          history={this._history}
          now={this._now}
          open={this._open}
        />
        <ServerSection servers={this._servers} now={this._now} actions={actions} />
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
      this._listeners.forEach(listener => listener());
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
  private _aborting = new Set<string>();
  private _error = '';
  private _open: OpenNotebook;
  private _listeners: (() => void)[] = [];
}

