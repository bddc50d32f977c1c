"""`--plot FILE.png`: grouped bars per dataset, datasets grouped by the card's capabilities, our runs
beside the six reported models; every bar carries its value. Needs matplotlib (the `plot` extra)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import EvalError
from .leaderboard import build
from .runs import reported_row

# ours: strong colours; reported: muted ones, so the eye finds our bars first
OURS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
REPORTED = ["#4d4d4d", "#a6cee3", "#b2df8a", "#fdbf6f", "#cab2d6", "#fb9a99"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise EvalError("--plot needs matplotlib: pip install 'xverse-eval[plot]' (or pip install matplotlib)") from None
    return plt


def _rows_of(capabilities: list[tuple[str, list[str]]], per_row: int = 6) -> list[list[tuple[str, list[str]]]]:
    """Capabilities in card order, packed into rows of at most PER_ROW datasets."""
    rows: list[list[tuple[str, list[str]]]] = [[]]
    for cap, tasks in capabilities:
        if rows[-1] and sum(len(t) for _, t in rows[-1]) + len(tasks) > per_row:
            rows.append([])
        rows[-1].append((cap, tasks))
    return rows


def _style(series: list[dict]) -> list[tuple[str, str]]:
    """(colour, legend label) per row of the leaderboard: ours strong, reported muted."""
    out, ours, ref = [], 0, 0
    for row in series:
        if row["kind"] == "run":
            out.append((OURS[ours % len(OURS)], f"{row['model']} (ours)"))
            ours += 1
        else:
            out.append((REPORTED[ref % len(REPORTED)], f"{row['model']} (reported)"))
            ref += 1
    return out


def plot(runs: list[dict[str, Any]], path: str | Path, title: str = "Scores (percent): our runs vs the XVERSE-65B card") -> Path:
    """Write `draw`'s figure to PATH (PNG, 110 dpi); returns PATH. EvalError if matplotlib is missing
    or PATH cannot be written."""
    plt = _pyplot()
    fig = draw(runs, title)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")  # tight: legend, title and notes outside the axes stay in
    except OSError as exc:
        raise EvalError(f"--plot {path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return path


def draw(runs: list[dict[str, Any]], title: str = "Scores (percent): our runs vs the XVERSE-65B card"):
    """The matplotlib Figure: one panel per capability of the card, in it one group of bars per
    dataset, one bar per run and reported model, each labelled with its value (marks as in the
    leaderboard), a legend and the leaderboard's notes."""
    plt = _pyplot()
    board = build(runs)
    series, styles = board["rows"], _style(board["rows"])
    columns = dict(zip(board["tasks"], board["columns"]))
    capabilities: list[tuple[str, list[str]]] = []
    for t in board["tasks"]:
        cap = (reported_row(t) or {}).get("capability", "Other")
        if capabilities and capabilities[-1][0] == cap:
            capabilities[-1][1].append(t)
        else:
            capabilities.append((cap, [t]))
    layout = _rows_of(capabilities)
    slots = max(sum(len(t) for _, t in row) for row in layout)
    fig = plt.figure(figsize=(max(6.5, 0.32 * len(series) * slots + 2.5), 3.9 * len(layout) + 1.2))
    subfigs = fig.subfigures(len(layout), 1, squeeze=False)[:, 0]
    width = 0.8 / len(series)
    for subfig, row in zip(subfigs, layout):
        axes = subfig.subplots(1, len(row), squeeze=False, sharey=True, width_ratios=[len(t) for _, t in row])[0]
        for ax, (cap, tasks) in zip(axes, row):
            for i, (entry, (color, label)) in enumerate(zip(series, styles)):
                xs = [k - 0.4 + width * (i + 0.5) for k in range(len(tasks))]
                values = [entry["scores"][t] for t in tasks]
                bars = ax.bar([x for x, v in zip(xs, values) if v is not None], [v for v in values if v is not None],
                              width=width * 0.92, color=color, label=label)
                ax.bar_label(bars, labels=[f"{v:.1f}{entry['marks'][t]}" for t, v in zip(tasks, values) if v is not None],
                             rotation=90, fontsize=7, padding=2)
                for x, v in zip(xs, values):
                    if v is None:
                        ax.text(x, 1, "n/a", rotation=90, fontsize=6.5, ha="center", va="bottom", color="#777777")
            ax.set_xticks(range(len(tasks)), [columns[t] for t in tasks], fontsize=9)
            ax.set_xlim(-0.5, len(tasks) - 0.5)
            ax.set_ylim(0, 115)
            ax.set_title(cap, fontsize=10)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
        axes[0].set_ylabel("score (%)")
    handles, names = fig.axes[0].get_legend_handles_labels()
    legend_rows = (len(names) + 3) // 4
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=8.5, frameon=False, bbox_to_anchor=(0.5, 0.99))
    fig.suptitle(title, fontsize=12, va="bottom", y=0.99 + (0.2 * legend_rows + 0.12) / fig.get_figheight())
    notes = [n for n in board["notes"] if not n.startswith(("Reported rows", "Average"))]  # the chart has no average
    fig.text(0.01, -0.01, "\n".join(notes), fontsize=7.5, va="top", ha="left", color="#333333")
    return fig
