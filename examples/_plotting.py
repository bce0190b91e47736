"""The matplotlib setup the examples share: a figure drawn off-screen (Agg) and saved small.

The examples import this only when asked for a plot (``--plot PATH``), so they run without
matplotlib (``pip install ".[plots]"``).
"""

from __future__ import annotations

from typing import Any

DPI = 110


def new_figure(width: float = 7.0, height: float = 3.5, columns: int = 1) -> tuple[Any, Any]:
    """``(figure, axes)`` of ``columns`` side by side (one axis for ``columns=1``), off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, columns, figsize=(width, height))


def save_figure(figure: Any, path: str) -> None:
    """Lay out, write ``path`` as a PNG at :data:`DPI` and free the figure."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
