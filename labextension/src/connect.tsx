import { Clipboard } from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { checkIcon, copyIcon } from '@jupyterlab/ui-components';
import React, { useState } from 'react';

import { IModelServer } from './api';
import { chatSnippet } from './format';

/** How a client reaches the server: the Jupyter token names the proxy's key, never holds it. */
export const JUPYTER_TOKEN_REFERENCE = 'os.environ["JUPYTER_TOKEN"]';

export function CopyButton(props: { text: string; label: string }) {
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
      <span className="jp-QwenCopy-label">{props.label}</span>
    </button>
  );
}

/** The server's OpenAI URL through Jupyter: origin + Jupyter's base URL + `proxy_path`. */
export function proxyUrl(proxyPath: string): string {
  return URLExt.join(window.location.origin, PageConfig.getBaseUrl(), proxyPath);
}

/**
 * `snippet` in unbreakable pieces (`ChatOpenAI(`, `base_url="…", `, `api_key=…, `, …) with
 * line breaks allowed only between them; a URL longer than the card scrolls.
 */
function pieces(snippet: string, url: string): React.ReactNode[] {
  return snippet.split(/(?<=\(|, )/).flatMap((piece, i) => {
    const [before, after] = piece.split(url);
    const body =
      after === undefined ? (
        piece
      ) : (
        <>
          {before}
          <span className="jp-QwenServer-url">{url}</span>
          {after}
        </>
      );
    const span = (
      <span key={`p${i}`} className="jp-QwenSnippet-piece">
        {body}
      </span>
    );
    return i ? [<wbr key={`w${i}`} />, span] : [span];
  });
}

type Route = 'direct' | 'proxy';

/**
 * The LangChain line for a server, with its URL in it once: directly (inside this machine)
 * or through Jupyter (from anywhere Jupyter is reachable, with the Jupyter token as key)
 * when the server extension offers a proxy path.
 */
export function Connect(props: { server: IModelServer }) {
  const { server } = props;
  const [route, setRoute] = useState<Route>('direct');
  const proxied = route === 'proxy' && server.proxy_path;
  const url = proxied ? proxyUrl(server.proxy_path!) : server.url;
  const snippet = chatSnippet(
    url,
    server.served_model_name,
    server.api_key_required,
    proxied ? JUPYTER_TOKEN_REFERENCE : null
  );
  const token = PageConfig.getToken();
  return (
    <div className="jp-QwenConnect">
      {server.proxy_path && (
        <div className="jp-QwenConnect-routes" role="tablist">
          {(['direct', 'proxy'] as Route[]).map(r => (
            <button
              key={r}
              role="tab"
              aria-selected={route === r}
              className={`jp-QwenConnect-route${route === r ? ' jp-mod-active' : ''}`}
              data-route={r}
              onClick={() => setRoute(r)}
            >
              {r === 'direct' ? 'in this machine' : 'through Jupyter'}
            </button>
          ))}
        </div>
      )}
      <pre className="jp-QwenServer-snippet" data-route={route}>
        {pieces(snippet, url)}
      </pre>
      <div className="jp-QwenConnect-copy">
        <CopyButton text={url} label="URL" />
        <CopyButton text={snippet} label="snippet" />
        {proxied && token && <CopyButton text={token} label="token" />}
      </div>
    </div>
  );
}
