import { ReactWidget } from '@jupyterlab/apputils';
import React from 'react';

import { IModelServer } from './api';
import { formatNumber } from './format';

/** "Qwen: 2 servers · 874 tok/s": the servers listed, and what the ready ones generate. */
export function statusText(servers: IModelServer[]): string {
  const n = servers.length;
  const rates = servers
    .map(s => s.engine?.generation_tokens_per_s)
    .filter((r): r is number => r !== null && r !== undefined);
  const rate = rates.length ? ` · ${formatNumber(rates.reduce((a, b) => a + b, 0), 0)} tok/s` : '';
  return `Qwen: ${n} server${n === 1 ? '' : 's'}${rate}`;
}

/**
 * The status-bar item, beside the kernel status: hidden while no server is listed; a click
 * opens the sidebar.
 */
export class QwenStatusItem extends ReactWidget {
  constructor(private readonly _openPanel: () => void) {
    super();
    this.addClass('jp-QwenStatusItem');
    this.hide();
  }

  /** Show the servers of the latest refresh. */
  setServers(servers: IModelServer[]): void {
    this._servers = servers;
    this.setHidden(servers.length === 0);
    this.update();
  }

  protected render(): JSX.Element {
    return (
      <button
        className="jp-QwenStatusItem-button"
        title="Qwen model servers: open the sidebar"
        onClick={this._openPanel}
      >
        {statusText(this._servers)}
      </button>
    );
  }

  private _servers: IModelServer[] = [];
}
