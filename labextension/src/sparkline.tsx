import React from 'react';

import { formatDuration } from './format';

/** One sample: memory in use and utilisation, both as fractions 0..1 (util may be unknown). */
export interface ISample {
  t: number; // ms since epoch
  memory: number;
  util: number | null;
}

/** Samples of the last `windowMs` per key (a GPU), oldest first. */
export class History {
  constructor(readonly windowMs: number) {}

  add(key: string, sample: ISample): void {
    const samples = this._series.get(key) ?? [];
    samples.push(sample);
    const cutoff = sample.t - this.windowMs;
    while (samples.length && samples[0].t < cutoff) {
      samples.shift();
    }
    this._series.set(key, samples);
  }

  get(key: string): ISample[] {
    return this._series.get(key) ?? [];
  }

  private _series = new Map<string, ISample[]>();
}

const MIN_SPAN_MS = 30 * 1000;

/** The time span the chart shows: the samples' age, between 30 s and the whole window. */
export function chartSpan(samples: ISample[], windowMs: number, now: number): number {
  const age = samples.length ? now - samples[0].t : 0;
  return Math.min(windowMs, Math.max(MIN_SPAN_MS, age));
}

/** "last 30 s", "last 2 min" */
export function spanLabel(spanMs: number): string {
  return `last ${formatDuration(spanMs / 1000)}`;
}

const W = 240;
const H = 40;

function path(samples: ISample[], value: (s: ISample) => number | null, x0: number, span: number) {
  let d = '';
  let pen = false;
  for (const s of samples) {
    const v = value(s);
    if (v === null) {
      pen = false;
      continue;
    }
    const x = ((s.t - x0) / span) * W;
    const y = H - 1 - Math.min(1, Math.max(0, v)) * (H - 2);
    d += `${pen ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)}`;
    pen = true;
  }
  return d;
}

/**
 * A small chart of the last `spanMs`: memory in use (filled, solid) and utilisation (dashed),
 * both 0..100 % of the card, with the scale beside it and a legend below.
 */
export function Sparkline(props: { samples: ISample[]; spanMs: number; now: number }) {
  const { samples, spanMs, now } = props;
  const x0 = now - spanMs;
  const memLine = path(samples, s => s.memory, x0, spanMs);
  const utilLine = path(samples, s => s.util, x0, spanMs);
  let memArea = '';
  if (samples.length > 1) {
    const first = ((samples[0].t - x0) / spanMs) * W;
    const last = ((samples[samples.length - 1].t - x0) / spanMs) * W;
    memArea = `${memLine}L${last.toFixed(1)},${H}L${first.toFixed(1)},${H}Z`;
  }
  return (
    <div className="jp-QwenChart">
      <div className="jp-QwenChart-y" aria-hidden="true">
        <span>100 %</span>
        <span>50 %</span>
        <span>0 %</span>
      </div>
      <svg
        className="jp-QwenSparkline"
        viewBox={`0 0 ${W} ${H}`}
        preserveAspectRatio="none"
        role="img"
        aria-label={`memory and utilisation, ${spanLabel(spanMs)}`}
      >
        <line className="jp-QwenSparkline-grid" x1="0" x2={W} y1={H / 2} y2={H / 2} />
        {memArea && <path className="jp-QwenSparkline-memArea" d={memArea} />}
        {memLine && <path className="jp-QwenSparkline-mem" d={memLine} />}
        {utilLine && <path className="jp-QwenSparkline-util" d={utilLine} />}
      </svg>
      <div className="jp-QwenChart-x" aria-hidden="true">
        <span>−{formatDuration(spanMs / 1000)}</span>
        <span>now</span>
      </div>
      <div className="jp-QwenCard-legend">
        <span className="jp-QwenLegend-mem">memory</span>
        <span className="jp-QwenLegend-util">utilisation</span>
        <span>{spanLabel(spanMs)}</span>
      </div>
    </div>
  );
}
