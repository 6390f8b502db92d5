"""The overview page (index.html): signals against thresholds, drift table, quality, fairness and exposure plots."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import Config
from monitoring import fairness, quality
from monitoring.data import MonitoringData
from monitoring.html import figure_png, fmt, page, table
from monitoring.policy import evaluate_signals


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _signals_section(config: Config, summary: dict[str, Any]) -> str:
    rows = []
    for s in evaluate_signals(summary["signals"], config):
        verdict = '<span class="fired">fired</span>' if s.fired else (
            '<span class="muted">not evaluated</span>' if s.value is None else '<span class="ok">ok</span>')
        rows.append((s.name, s.value, f"{s.rule} {s.threshold}", verdict))
    info = [(k, v) for k, v in summary["signals"].items() if k not in {"drift_share", "quality_drop", "fairness_ratio"}]
    return (table(["signal", "value", "fires when", "status"], rows, raw_columns=(3,))
            + "<p class='note'>Other figures: " + ", ".join(f"{escape(k)} = {fmt(v)}" for k, v in info) + "</p>")


def _drift_section(summary: dict[str, Any]) -> str:
    rows = []
    for name, rep in summary["drift"]["reports"].items():
        link = f'<a href="{escape(rep["html"])}">{escape(name)}</a>' if rep.get("html") else escape(name)
        if rep["status"] != "ok":
            rows.append((link, "skipped", rep["reason"], None, None, '<span class="muted">skipped</span>'))
            continue
        for col, c in rep["columns"].items():
            rows.append((link, col, c["method"], c["value"], c["threshold"],
                         '<span class="fired">drift</span>' if c["drifted"] else '<span class="ok">no drift</span>'))
    d = summary["drift"]
    note = (f"<p>{d['drifted_columns']} of {d['total_columns']} monitored features drifted "
            f"(share {fmt(d['share'])}). Reference: training split; current: the current log window; "
            "recommendations are compared with the baseline log window.</p>")
    return note + table(["report", "feature", "method", "score", "threshold", "verdict"], rows, raw_columns=(0, 5))


def _quality_section(summary: dict[str, Any], cur_q: pd.DataFrame, base_q: pd.DataFrame) -> str:
    plt = _plt()
    q = summary["quality"]
    rows = [(name, s["requests"], s["evaluable_requests"], s["hit_rate"], s["ndcg"])
            for name, s in (("baseline", q["baseline"]), ("current", q["current"]))]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    labels = ["baseline", "current"]
    for offset, metric in ((-0.2, "hit_rate"), (0.2, "ndcg")):
        vals = [q[w][metric] if q[w][metric] is not None else 0.0 for w in labels]
        axes[0].bar(np.arange(2) + offset, vals, width=0.4, label=f"{metric}@{q['k']}")
    axes[0].set_xticks(range(2), labels)
    axes[0].set_title("Online quality by window")
    axes[0].legend()
    daily = pd.concat([quality.daily_quality(base_q).assign(window="baseline"),
                       quality.daily_quality(cur_q).assign(window="current")])
    for window, sub in daily.groupby("window"):
        axes[1].plot(sub["day"], sub["hit_rate"], marker="o", label=f"hit rate ({window})")
    axes[1].set_title("Daily hit rate of evaluable requests")
    axes[1].tick_params(axis="x", rotation=30)
    if not daily.empty:
        axes[1].legend()
    fig.tight_layout()
    return (f"<p>Hit rate and NDCG at {q['k']} of logged recommendations against the user's interactions within "
            f"{q['horizon_hours']} h after the request (requests whose horizon has not passed, or with no later "
            f"interaction, are not evaluable). Relative hit-rate drop: {fmt(q['relative_hit_rate_drop'])}.</p>"
            + table(["window", "requests", "evaluable", "hit rate", "NDCG"], rows) + figure_png(fig))


def _fairness_section(summary: dict[str, Any]) -> str:
    plt = _plt()
    f = summary["fairness"]
    attributes = list(f["groups"])
    if not attributes:
        return "<h2>Fairness</h2><p>No fairness groups declared (dataset.fairness_groups).</p>"
    fig, axes = plt.subplots(1, len(attributes), figsize=(5.5 * len(attributes), 3.6), squeeze=False)
    html = []
    for ax, attr in zip(axes[0], attributes, strict=True):
        groups = f["groups"][attr]["groups"]
        names = sorted(groups)
        ax.bar(names, [groups[g]["hit_rate"] for g in names],
               color=["#4c72b0" if groups[g]["counted"] else "#bbbbbb" for g in names])
        ax.set_title(f"Hit rate by {attr} (grey: < {f['min_group_size']} requests)")
        ax.tick_params(axis="x", rotation=30)
        rows = [(g, groups[g]["requests"], groups[g]["hit_rate"], groups[g]["ndcg"], groups[g]["counted"])
                for g in names]
        result = f["groups"][attr]
        html.append(f"<h3>{escape(attr)}: worst/best = {fmt(result['ratio'])} "
                    f"({escape(str(result['worst']))} / {escape(str(result['best']))})</h3>"
                    + table(["group", "evaluable requests", "hit rate", "NDCG", "in ratio"], rows))
    fig.tight_layout()
    return "".join(html) + figure_png(fig)


def _exposure_section(summary: dict[str, Any], data: MonitoringData) -> str:
    plt = _plt()
    e = summary["exposure"]
    catalogue = np.unique(data.items["item_id"].to_numpy())
    rec_counts = data.current_recommendations["item_id"].value_counts().reindex(catalogue, fill_value=0).to_numpy()
    ref_counts = data.reference_interactions["item_id"].value_counts().reindex(catalogue, fill_value=0).to_numpy()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for counts, label in ((ref_counts, "reference consumption"), (rec_counts, "current recommendations")):
        x, y = fairness.lorenz_curve(counts)
        axes[0].plot(x, y, label=f"{label} (Gini {fairness.gini(counts):.3f})")
    axes[0].plot([0, 1], [0, 1], "k--", linewidth=0.8, label="equal exposure")
    axes[0].set_xlabel("share of catalogue items (least exposed first)")
    axes[0].set_ylabel("share of exposure")
    axes[0].set_title("Lorenz curve of item exposure")
    axes[0].legend(fontsize=8)
    shares = [e["catalogue_long_tail_share"], e["reference_long_tail_share"], e["long_tail_share"]]
    axes[1].bar(["catalogue", "reference consumption", "recommendations"], [s or 0.0 for s in shares],
                color=["#999999", "#55a868", "#4c72b0"])
    axes[1].set_title("Long-tail share")
    fig.tight_layout()
    rows = [(k, e[k]) for k in ("slots", "long_tail_share", "catalogue_long_tail_share", "reference_long_tail_share",
                                "gini", "reference_gini", "coverage", "head_items", "catalogue_items")]
    return ("<p>Head = the most consumed items in the reference window; the long tail is the rest of the "
            "catalogue.</p>" + table(["figure", "value"], rows) + figure_png(fig))


def write_overview(config: Config, summary: dict[str, Any], cur_q: pd.DataFrame, base_q: pd.DataFrame,
                   data: MonitoringData, path: str | Path) -> Path:
    """Write the overview page; returns its path."""
    w = summary["windows"]
    intro = (f"Current window {w['current']['start']} to {w['current']['end']}; baseline {w['baseline']['start']} "
             f"to {w['baseline']['end']}; reference (training) up to {w['reference']['end']}. "
             f"Model version(s): {', '.join(summary['model_versions']) or 'none'}.")
    html = page("Recommendation monitoring", intro, [
        ("Retraining signals", _signals_section(config, summary)),
        ("Drift (Evidently)", _drift_section(summary)),
        ("Online quality", _quality_section(summary, cur_q, base_q)),
        ("Fairness by user group", _fairness_section(summary)),
        ("Item exposure", _exposure_section(summary, data)),
    ])
    path = Path(path)
    path.write_text(html, encoding="utf-8")
    return path
