"""Figures: a model's per-layer secure cost, and benchmark rows against batch size (pip install 'pysmpc[plot]').

Built on matplotlib's object API with the Agg canvas (no pyplot, no
display), so plotting needs no GUI and leaves no global figure state.
"""

from __future__ import annotations

import os

__all__ = ["MISSING_MATPLOTLIB", "require_matplotlib", "plot_bench", "plot_layers"]

#: The message of the ImportError raised when a figure is asked for and matplotlib is missing.
MISSING_MATPLOTLIB = "plotting needs matplotlib: pip install 'pysmpc[plot]' (or pip install matplotlib)"

# One colour per system, so that a system keeps its colour across figures.
_COLOURS = {"plaintext numpy (float64)": "#7f7f7f", "pytorch": "#ee4c2c",
            "pysmpc in-process": "#1f77b4", "pysmpc tcp": "#2ca02c"}


def require_matplotlib() -> None:
    """Raise ImportError naming the pysmpc[plot] extra if matplotlib is missing (call before long work)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(MISSING_MATPLOTLIB) from None


def _figure(width: float, height: float):
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_layers(layers: list[dict], path: str | os.PathLike, title: str) -> None:
    """Draw per-layer online bytes, rounds and time (measure_layers' rows) as three bar charts into `path`.

    Layers that cost nothing on their own (flatten, a pool folded into the
    convolution before it) keep their place on the axis, at zero.
    """
    figure = _figure(9, 7.5)
    axes = figure.subplots(3, 1, sharex=True)
    names = [layer["name"] for layer in layers]
    positions = range(len(layers))
    panels = [
        ([layer["bytes_sent"] / 1e3 for layer in layers], "kB sent\n(each computing party)", "{:,.1f}", "#1f77b4"),
        ([layer["rounds"] for layer in layers], "rounds", "{:d}", "#ff7f0e"),
        ([1e3 * layer["seconds"] for layer in layers], "time (ms, median)", "{:.2f}", "#2ca02c"),
    ]
    for ax, (values, label, fmt, colour) in zip(axes, panels):
        bars = ax.bar(positions, values, color=colour)
        ax.bar_label(bars, labels=[fmt.format(v) if v else "" for v in values], fontsize=8, padding=2)
        ax.set_ylabel(label)
        ax.margins(y=0.2)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.set_title(f"total {fmt.format(sum(values))}", loc="right", fontsize=9)
    axes[-1].set_xticks(list(positions), [f"{n}\n({layer['kind']})" for n, layer in zip(names, layers)],
                        fontsize=8)
    figure.suptitle(title)
    figure.savefig(path, dpi=110)


def plot_bench(rows: list[dict], path: str | os.PathLike, title: str) -> None:
    """Draw latency and throughput against batch size, one line per system (measure_inference's rows), into `path`."""
    figure = _figure(11, 4.5)
    latency_ax, throughput_ax = figure.subplots(1, 2)
    systems = list(dict.fromkeys(r["system"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    for system in systems:
        points = sorted((r["batch"], r["latency_ms"], r["images_per_s"]) for r in rows if r["system"] == system)
        xs = [p[0] for p in points]
        style = dict(marker="o", color=_COLOURS.get(system),
                     linestyle="--" if not system.startswith("pysmpc") else "-", label=system)
        latency_ax.plot(xs, [p[1] for p in points], **style)
        throughput_ax.plot(xs, [p[2] for p in points], **style)
    for ax, label in ((latency_ax, "latency per batch (ms, online)"), (throughput_ax, "throughput (images/s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    throughput_ax.legend(fontsize=8, loc="best")
    figure.suptitle(title)
    figure.savefig(path, dpi=110)
