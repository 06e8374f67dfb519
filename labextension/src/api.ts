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

export interface IEngineStats {
  requests_running: number;
  requests_waiting: number;
  kv_cache_usage: number;
  prefix_cache_hit_rate: number;
  generation_tokens_per_s: number;
  prompt_tokens_per_s: number;
}

/** One running model server, as `GET jupyter-qwen/servers` lists it. */
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
  status: 'ok' | 'loading' | 'dead' | 'unreachable';
  engine: IEngineStats | null;
  health_error: string | null;
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
