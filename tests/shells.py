"""The one IPython shell of a test run, for tests of the magics."""

from __future__ import annotations


def ipython_shell():
    """IPython's test shell with jupyter_qwen loaded and every display format on. There is one
    per process: the first caller starts it, the others get the same one."""
    from IPython.testing.globalipapp import get_ipython, start_ipython

    shell = start_ipython() or get_ipython()
    shell.display_formatter.active_types = shell.display_formatter.format_types
    shell.run_line_magic("load_ext", "jupyter_qwen")
    return shell
