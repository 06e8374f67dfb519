import React from 'react';

import { IGpu, IGpuReply, IModelServer } from './api';
import { CardBoundary } from './boundary';
import { formatBytes, formatPercent } from './format';
import { NotebookLink, OpenNotebook } from './notebook';
import { History, Sparkline, chartSpan } from './sparkline';

export const HISTORY_MS = 5 * 60 * 1000;

/** One piece of a GPU's memory bar. */
export interface ISegment {
  key: string;
  label: string;
  bytes: number;
  kind: 'server' | 'process' | 'other' | 'free';
  notebook: string | null;
  title: string;
}

/** The servers that hold memory on GPU `index`: same process, or the device says so. */
function serversOn(gpu: IGpu, servers: IModelServer[], pid: number | null): IModelServer[] {
  return servers.filter(s =>
    pid !== null ? s.pid === pid : (s.engine?.memory?.device ?? s.device) === `cuda:${gpu.index}`
  );
}

function names(servers: IModelServer[]): string {
  return servers.map(s => s.served_model_name).join(', ');
}

/**
 * GPU `gpu`'s memory, split: each process NVML lists (named by its server and notebook),
 * each server on this GPU that NVML did not list (its own NVML figure), the rest of the used
 * memory as "other processes", then what is free. Pieces without a figure are left out.
 */
export function memorySegments(gpu: IGpu, servers: IModelServer[]): ISegment[] {
  const segments: ISegment[] = [];
  const listed = new Set<number>();
  for (const p of gpu.processes) {
    listed.add(p.pid);
    const own = serversOn(gpu, servers, p.pid);
    const bytes = p.used_memory ?? own[0]?.engine?.memory?.process_gpu_bytes ?? null;
    if (bytes === null || bytes <= 0) {
      continue;
    }
    const label = own.length ? names(own) : p.notebook_path ?? `pid ${p.pid}`;
    segments.push({
      key: `pid-${p.pid}`,
      label,
      bytes,
      kind: own.length ? 'server' : 'process',
      notebook: p.notebook_path,
      title: `pid ${p.pid}${p.notebook_path ? ` · ${p.notebook_path}` : ''}`
    });
  }
  for (const s of serversOn(gpu, servers, null)) {
    const bytes = s.engine?.memory?.process_gpu_bytes ?? null;
    if (listed.has(s.pid) || bytes === null || bytes <= 0) {
      continue;
    }
    segments.push({
      key: `server-${s.id}`,
      label: s.served_model_name,
      bytes,
      kind: 'server',
      notebook: s.notebook_path,
      title: `pid ${s.pid}`
    });
  }
  const known = segments.reduce((sum, s) => sum + s.bytes, 0);
  const other = gpu.memory_used - known;
  if (other > 0) {
    segments.push({
      key: 'other',
      label: 'other processes',
      bytes: other,
      kind: 'other',
      notebook: null,
      title: 'memory in use that no listed process accounts for'
    });
  }
  const free = gpu.memory_total - Math.max(gpu.memory_used, known);
  if (free > 0) {
    segments.push({ key: 'free', label: 'free', bytes: free, kind: 'free', notebook: null, title: 'free' });
  }
  return segments;
}

const PALETTE = 4; // server and process pieces cycle through this many colours

function MemoryBar(props: { gpu: IGpu; segments: ISegment[]; open: OpenNotebook }) {
  const total = Math.max(props.gpu.memory_total, 1);
  let coloured = 0;
  const colourOf = new Map<string, string>();
  for (const s of props.segments) {
    colourOf.set(
      s.key,
      s.kind === 'server' || s.kind === 'process' ? `jp-QwenSeg-c${coloured++ % PALETTE}` : `jp-QwenSeg-${s.kind}`
    );
  }
  return (
    <>
      <div className="jp-QwenBar jp-QwenBar-split" role="img" aria-label="GPU memory by process">
        {props.segments.map(s => (
          <div
            key={s.key}
            className={`jp-QwenBar-seg ${colourOf.get(s.key)}`}
            style={{ width: `${(100 * s.bytes) / total}%` }}
            title={`${s.label}: ${formatBytes(s.bytes)}`}
          />
        ))}
      </div>
      <ul className="jp-QwenGpu-procs">
        {props.segments.map(s => (
          <li key={s.key} title={s.title} data-kind={s.kind}>
            <span className={s.kind === 'other' || s.kind === 'free' ? 'jp-QwenGpu-rest' : 'jp-QwenGpu-owner'}>
              <span className={`jp-QwenSwatch ${colourOf.get(s.key)}`} />
              {s.kind === 'process' && s.notebook ? (
                <NotebookLink path={s.notebook} open={props.open} />
              ) : (
                <span className="jp-QwenGpu-label">{s.label}</span>
              )}
              {s.kind === 'server' && s.notebook && (
                <NotebookLink path={s.notebook} open={props.open} className="jp-QwenGpu-nb" />
              )}
            </span>
            <span className="jp-QwenGpu-bytes">{formatBytes(s.bytes)}</span>
          </li>
        ))}
      </ul>
    </>
  );
}

function GpuCard(props: {
  gpu: IGpu;
  servers: IModelServer[];
  history: History;
  now: number;
  open: OpenNotebook;
}) {
  const { gpu } = props;
  const samples = props.history.get(String(gpu.index));
  const span = chartSpan(samples, HISTORY_MS, props.now);
  const used = gpu.memory_total ? gpu.memory_used / gpu.memory_total : null;
  const extras = [
    gpu.utilization_gpu === null ? null : `${gpu.utilization_gpu} % busy`,
    gpu.temperature_c === null ? null : `${gpu.temperature_c} °C`
  ].filter(Boolean);
  return (
    <div className="jp-QwenCard jp-QwenGpu" data-gpu-index={gpu.index}>
      <div className="jp-QwenCard-title">
        <span className="jp-QwenCard-name">
          GPU {gpu.index} · {gpu.name}
        </span>
        <span className="jp-QwenCard-aside">{extras.join(' · ')}</span>
      </div>
      <div className="jp-QwenCard-line">
        {formatBytes(gpu.memory_used)} / {formatBytes(gpu.memory_total)} ({formatPercent(used, 0)})
      </div>
      <MemoryBar gpu={gpu} segments={memorySegments(gpu, props.servers)} open={props.open} />
      <Sparkline samples={samples} spanMs={span} now={props.now} />
    </div>
  );
}

export function GpuSection(props: {
  reply: IGpuReply | null;
  servers: IModelServer[];
  history: History;
  now: number;
  open: OpenNotebook;
}) {
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
        <CardBoundary key={gpu.index} what={`GPU ${gpu.index}`}>
          <GpuCard
            gpu={gpu}
            servers={props.servers}
            history={props.history}
            now={props.now}
            open={props.open}
          />
        </CardBoundary>
      ))}
    </section>
  );
}
