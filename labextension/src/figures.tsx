import React from 'react';

import { IEngineLatency, IEngineMemory, IRunningRequest } from './api';
import { formatBytes, formatDuration, formatLatency, formatNumber, formatPercent } from './format';

export const NOT_REPORTED = 'not reported';

type Figure = number | null | undefined;

const known = (value: Figure): value is number => value !== null && value !== undefined;

/** `label: value` rows; a value the server did not report reads "not reported". */
function Facts(props: { className: string; rows: [string, React.ReactNode | null][] }) {
  return (
    <dl className={`jp-QwenFacts ${props.className}`}>
      {props.rows.map(([label, value]) => (
        <React.Fragment key={label}>
          <dt>{label}</dt>
          <dd className={value === null ? 'jp-QwenFacts-missing' : undefined}>
            {value ?? NOT_REPORTED}
          </dd>
        </React.Fragment>
      ))}
    </dl>
  );
}

const bytesOrNull = (value: Figure) => (known(value) ? formatBytes(value) : null);

/** The KV cache: blocks in use of the pool, their bytes, and a bar scaled to the pool. */
function kvCache(memory: IEngineMemory): React.ReactNode | null {
  const { kv_blocks_used: used, kv_blocks_total: total, kv_block_bytes: block } = memory;
  const poolBytes = memory.kv_cache_bytes ?? (known(total) && known(block) ? total * block : null);
  if (!known(used) || !known(total)) {
    return poolBytes === null ? null : formatBytes(poolBytes);
  }
  const usedBytes = known(block) ? used * block : null;
  const fraction = total ? used / total : null;
  return (
    <span className="jp-QwenKv">
      <span>
        {formatNumber(used, 0)} / {formatNumber(total, 0)} blocks ({formatPercent(fraction)})
      </span>{' '}
      <span>
        {formatBytes(usedBytes)} of {formatBytes(poolBytes)}
      </span>
      <span className="jp-QwenBar jp-QwenBar-kv" title={formatPercent(fraction)}>
        <span className="jp-QwenBar-fill" style={{ width: `${100 * (fraction ?? 0)}%` }} />
      </span>
    </span>
  );
}

/** Where one server's memory goes, by the engine's own accounting. */
export function MemoryFigures(props: { memory: IEngineMemory | null | undefined }) {
  const memory = props.memory;
  if (!memory) {
    return <div className="jp-QwenCard-line jp-QwenServer-memory">memory {NOT_REPORTED}</div>;
  }
  const onGpu = (memory.device ?? '').startsWith('cuda');
  return (
    <Facts
      className="jp-QwenServer-memory"
      rows={[
        ['weights', bytesOrNull(memory.weights_bytes)],
        ['KV cache', kvCache(memory)],
        ['activations', bytesOrNull(memory.activations_bytes)],
        ['CUDA graphs', bytesOrNull(memory.cuda_graph_bytes) ?? (onGpu ? null : 'none on CPU')],
        onGpu
          ? ['process on GPU', bytesOrNull(memory.process_gpu_bytes)]
          : ['process RSS', bytesOrNull(memory.rss_bytes)]
      ]}
    />
  );
}

/** Time to first token and between tokens, p50 / p95, over the server's window. */
export function LatencyFigures(props: { latency: IEngineLatency | null | undefined }) {
  const latency = props.latency;
  if (!latency) {
    return <div className="jp-QwenCard-line jp-QwenServer-latency">latency {NOT_REPORTED}</div>;
  }
  const pair = (p50: Figure, p95: Figure) =>
    known(p50) || known(p95) ? `p50 ${formatLatency(p50)} · p95 ${formatLatency(p95)}` : null;
  const window = known(latency.window_s) ? `last ${formatDuration(latency.window_s)}` : null;
  return (
    <Facts
      className="jp-QwenServer-latency"
      rows={[
        ['first token', pair(latency.ttft_p50_s, latency.ttft_p95_s)],
        ['between tokens', pair(latency.itl_p50_s, latency.itl_p95_s)],
        [
          'requests',
          known(latency.requests) ? `${formatNumber(latency.requests, 0)}${window ? ` in the ${window}` : ''}` : null
        ]
      ]}
    />
  );
}

/** The requests the server is running or holding, each with an Abort button. */
export function RunningRequests(props: {
  running: IRunningRequest[] | null | undefined;
  aborting: Set<string>;
  onAbort: ((requestId: string) => void) | null;
}) {
  const { running } = props;
  if (!running) {
    return <div className="jp-QwenCard-line jp-QwenRunning-none">requests {NOT_REPORTED}</div>;
  }
  if (running.length === 0) {
    return <div className="jp-QwenCard-line jp-QwenRunning-none">no request running</div>;
  }
  return (
    <table className="jp-QwenRunning">
      <caption>requests</caption>
      <tbody>
        {running.map(r => (
          <tr key={r.request_id} data-request-id={r.request_id}>
            <td>
              <div className="jp-QwenRunning-head">
                <code className="jp-QwenRunning-id" title={r.request_id}>
                  {r.request_id.length > 16 ? `…${r.request_id.slice(-12)}` : r.request_id}
                </code>{' '}
                <span className={`jp-QwenRunning-state jp-QwenRunning-${r.state}`}>{r.state}</span>{' '}
                <span>{formatDuration(r.age_s)}</span>
              </div>
              <div className="jp-QwenRunning-tokens">
                {formatNumber(r.prompt_tokens, 0)} prompt · {formatNumber(r.cached_tokens, 0)} cached ·{' '}
                {formatNumber(r.generated_tokens, 0)} generated
                {r.session ? ` · session ${r.session}` : ''}
              </div>
            </td>
            {props.onAbort && (
              <td className="jp-QwenRunning-action">
                <button
                  className="jp-QwenRunning-abort jp-mod-styled jp-mod-warn"
                  disabled={props.aborting.has(r.request_id)}
                  title={`Abort request ${r.request_id}`}
                  onClick={() => props.onAbort?.(r.request_id)}
                >
                  Abort
                </button>
              </td>
            )}
          </tr>
        ))}
      </tbody>
    </table>
  );
}
