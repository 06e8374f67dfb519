import React from 'react';

interface IBoundaryProps {
  /** What the card shows, for the message when it cannot be drawn ("server qwen3-demo"). */
  what: string;
  children?: React.ReactNode;
}

interface IBoundaryState {
  error: Error | null;
}

/**
 * Draws its card, or, when drawing it throws, one line that says so: one card that cannot
 * be drawn never takes the rest of the panel down. The next reply tries the card again.
 */
export class CardBoundary extends React.Component<IBoundaryProps, IBoundaryState> {
  state: IBoundaryState = { error: null };

  static getDerivedStateFromError(error: Error): IBoundaryState {
    return { error };
  }

  componentDidCatch(error: Error, info: React.ErrorInfo): void {
    console.warn(`jupyter-qwen: cannot draw ${this.props.what}`, error, info.componentStack);
  }

  componentDidUpdate(previous: IBoundaryProps): void {
    // fresh data: give the card another chance
    if (this.state.error && previous.children !== this.props.children) {
      this.setState({ error: null });
    }
  }

  render(): React.ReactNode {
    if (this.state.error) {
      return (
        <div className="jp-QwenCard jp-QwenCard-broken" role="alert">
          Cannot show {this.props.what}: {this.state.error.message}
        </div>
      );
    }
    return this.props.children;
  }
}
