import { notebookIcon } from '@jupyterlab/ui-components';
import React from 'react';

/** Opens a notebook of this Jupyter server by its path (`docmanager:open`). */
export type OpenNotebook = (path: string) => void;

/** A notebook's path that opens it when clicked. */
export function NotebookLink(props: { path: string; open: OpenNotebook; className?: string }) {
  return (
    <button
      className={`jp-QwenNotebookLink ${props.className ?? ''}`}
      title={`Open ${props.path}`}
      onClick={() => props.open(props.path)}
    >
      <notebookIcon.react tag="span" className="jp-QwenInlineIcon" />
      {props.path}
    </button>
  );
}
