/**
 * How the sidebar writes numbers, bytes, durations and the LangChain snippet: the rules of
 * jupyter_qwen/format.py and of the notebook widget (jupyter_qwen/notebook/static/panel.js).
 * tests/format_cases.json holds the cases all three pass (tests/test_format.py).
 */

export const MISSING = '–';
const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
const SECONDS_UNTIL_MINUTES = 120;
const MINUTES_UNTIL_HOURS = 120;
const API_KEY_REFERENCE = 'qwen_server.api_key';

type Figure = number | null | undefined;

const missing = (value: Figure): value is null | undefined => value === null || value === undefined;

/** `1,234.5`: thousands grouped, at most `digits` decimals, no trailing zeros. */
export function formatNumber(value: Figure, digits = 1): string {
  if (missing(value)) {
    return MISSING;
  }
  return value.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

/** `12.5 %` for 0.125. */
export function formatPercent(fraction: Figure, digits = 1): string {
  return missing(fraction) ? MISSING : `${formatNumber(100 * fraction, digits)} %`;
}

/**
 * `1.5 GiB`, `640 MiB`: binary units, the largest that keeps the figure at 1 or more unless
 * `unit` names one; one decimal from GiB up and none below unless `digits` says.
 */
export function formatBytes(
  value: Figure,
  unit: string | null = null,
  digits: number | null = null,
  signed = false
): string {
  if (missing(value)) {
    return MISSING;
  }
  let index = unit === null ? 0 : BYTE_UNITS.indexOf(unit);
  while (unit === null && Math.abs(value) >= 1024 ** (index + 1) && index < BYTE_UNITS.length - 1) {
    index++;
  }
  const places = digits ?? (index >= 3 ? 1 : 0);
  const figure = (Math.abs(value) / 1024 ** index).toLocaleString('en-US', {
    minimumFractionDigits: places,
    maximumFractionDigits: places
  });
  const sign = value < 0 ? '-' : signed ? '+' : '';
  return `${sign}${figure} ${BYTE_UNITS[index]}`;
}

/** `45 s` below 2 minutes, `7 min` below 2 hours, then `3 h` (rounded). */
export function formatDuration(seconds: Figure): string {
  if (missing(seconds)) {
    return MISSING;
  }
  if (Math.abs(seconds) < SECONDS_UNTIL_MINUTES) {
    return `${formatNumber(seconds, 0)} s`;
  }
  if (Math.abs(seconds) < 60 * MINUTES_UNTIL_HOURS) {
    return `${formatNumber(seconds / 60, 0)} min`;
  }
  return `${formatNumber(seconds / 3600, 0)} h`;
}

/**
 * The LangChain line for a server: `api_key="EMPTY"` without a key, else a reference to it
 * (never the key itself); `keyExpression` replaces that reference (the proxy's token).
 */
export function chatSnippet(
  url: string,
  model: string,
  apiKeyRequired: boolean,
  keyExpression: string | null = null
): string {
  const key = keyExpression ?? (apiKeyRequired ? API_KEY_REFERENCE : '"EMPTY"');
  return `ChatOpenAI(base_url="${url}", api_key=${key}, model="${model}")`;
}

/** A latency: `85 ms` below a second, else `1.25 s`. */
const MILLISECONDS_UNTIL_SECONDS = 0.9995; // rounds to "1,000 ms" from here: say "1 s"

/** `45 ms` below a second, `1.3 s` up to two minutes, then as `formatDuration`. */
export function formatLatency(seconds: Figure): string {
  if (missing(seconds)) {
    return MISSING;
  }
  if (Math.abs(seconds) < MILLISECONDS_UNTIL_SECONDS) {
    return `${formatNumber(seconds * 1000, 0)} ms`;
  }
  if (Math.abs(seconds) < SECONDS_UNTIL_MINUTES) {
    return `${formatNumber(seconds, 1)} s`;
  }
  return formatDuration(seconds);
}
