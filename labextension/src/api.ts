import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** A process holding memory on a GPU, mapped to its notebook when it is one of our kernels. */
export interface IGpuProcess {
  pid: number;
  used_memory: number | null;
  kernel_id: string | null;
  notebook_path: string | null;
}

export interface IGpu {
  index: number;
  name: string;
  memory_used: number;
  memory_total: number;
  utilization_gpu: number | null;
  temperature_c: number | null;
  processes: IGpuProcess[];
}

/** `GET jupyter-qwen/gpus` */
export interface IGpuReply {
  available: boolean;
  reason: string;
  gpus: IGpu[];
}

/**
 * What a model server's `/health` says, as the server extension passes it on.
 *
 * Every figure a server may not have (loading, failed, dead, a remote one, an older
 * version) is optional or nullable, so reading one without saying what to show when it is
 * missing does not compile. Views write "–" (format.ts MISSING) or "not reported" then.
 */

/** A server's status word; "unreachable" when the server extension got no answer. */
export type ServerStatus =
  | 'loading'
  | 'ok'
  | 'failed'
  | 'dead'
  | 'stopping'
  | 'stopped'
  | 'unreachable';

/** Where a server runs: in a notebook's kernel, its own process, or elsewhere. */
export type ServerOrigin = 'kernel' | 'process' | 'remote';

/** `engine.memory`: the engine's own accounting of where its memory goes (bytes). */
export interface IEngineMemory {
  device?: string | null;
  weights_bytes?: number | null;
  kv_cache_bytes?: number | null;
  kv_blocks_used?: number | null;
  kv_blocks_total?: number | null;
  kv_block_bytes?: number | null;
  activations_bytes?: number | null;
  cuda_graph_bytes?: number | null;
  torch_reserved_bytes?: number | null;
  torch_allocated_bytes?: number | null;
  /** What NVML counts for the server's process on its GPU. */
  process_gpu_bytes?: number | null;
  rss_bytes?: number | null;
}

/** `engine.latency`: percentiles over the requests that finished in the last `window_s`. */
export interface IEngineLatency {
  window_s?: number | null;
  requests?: number | null;
  ttft_p50_s?: number | null;
  ttft_p95_s?: number | null;
  itl_p50_s?: number | null;
  itl_p95_s?: number | null;
}

/** One row of `engine.running`. */
export interface IRunningRequest {
  request_id: string;
  state: 'running' | 'waiting';
  age_s?: number | null;
  prompt_tokens?: number | null;
  cached_tokens?: number | null;
  generated_tokens?: number | null;
  session?: string | null;
}

/** `engine`: a loading or failed server has only `engine_state`. */
export interface IEngineStats {
  engine_state?: string | null;
  chat_variant?: string | null;
  requests_running?: number | null;
  requests_waiting?: number | null;
  kv_cache_usage?: number | null;
  prefix_cache_hit_rate?: number | null;
  generation_tokens_per_s?: number | null;
  prompt_tokens_per_s?: number | null;
  memory?: IEngineMemory | null;
  latency?: IEngineLatency | null;
  running?: IRunningRequest[] | null;
}

/** `loading`: the load's phase and how far it got (0..1), while the status is "loading". */
export interface ILoading {
  phase?: string | null;
  fraction?: number | null;
}

/** One model server, as `GET jupyter-qwen/servers` lists it (its record + its /health). */
export interface IModelServer {
  id: string;
  pid: number;
  url: string;
  root_url: string;
  model: string;
  served_model_name: string;
  started_at: number;
  kernel_id: string | null;
  notebook_path: string | null;
  api_key_required: boolean;
  version: string;
  status: ServerStatus;
  engine: IEngineStats | null;
  /** Why the server extension could not read /health (not the server's own error). */
  health_error: string | null;
  /** Relative to Jupyter's base URL: the server's OpenAI API through Jupyter. */
  proxy_path?: string | null;
  origin?: ServerOrigin | null;
  device?: string | null;
  uptime?: number | null;
  loading?: ILoading | null;
  /** The server's own failure, one line; the whole text in `error_detail`. */
  error?: string | null;
  error_detail?: string | null;
  hint?: string | null;
}

export interface IServersReply {
  servers: IModelServer[];
}

/**
 * Call a route of the jupyter_qwen server extension (`{baseUrl}jupyter-qwen/{endpoint}`).
 *
 * Goes through ServerConnection, so it carries Jupyter's auth and XSRF headers and
 * works behind a base URL such as JupyterHub's `/user/<name>/`.
 */
export async function requestAPI<T>(endpoint: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'jupyter-qwen', endpoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let data: any = text;
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    // not JSON: keep the text for the error message
  }
  if (!response.ok) {
    const message = (data && data.message) || text || response.statusText;
    throw new ServerConnection.ResponseError(response, message);
  }
  return data as T;
}
