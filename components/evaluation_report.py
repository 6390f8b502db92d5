"""The evaluation report: report.md and report.html (tables, embedded PNG plots), metrics.json, decision.json."""

from __future__ import annotations

import html
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.evaluation_types import Evaluation, ModelResult
from components.html_report import page as html_page
from components.html_report import png_img
from components.metrics import Estimate, per_user_metrics
from components.trust_report import markdown as trust_markdown

METHOD_NOTES = [
    "Split: temporal leave-last-out per user (last interaction = test, the one before = validation); the "
    "`cold_start_items` items that appeared latest are held out of training entirely.",
    "Main ranking: each test user's target against the whole warm catalogue, excluding items the user saw "
    "before (train + validation); ties are resolved in expectation (a constant scorer = random ranking).",
    "Intervals: 95% percentile bootstrap over users (same resamples for every recommender).",
    "Baselines are fitted on the training rows; item-kNN neighbourhood and EASE lambda are tuned on validation.",
    "Cold start: cold-test users' last cold-item interaction (and, in a second line, every cold-item interaction) "
    "ranked among the cold items only. "
    "new-item-popularity scores a cold item by its interactions from other users strictly before the target's "
    "timestamp (point in time; the target and later events are never counted); random = exact expectation.",
    "Served mix: from the first interaction on the cold items, each test user's target there and every cold-item "
    "interaction ranked in one list of the warm and the cold items, as the API serves them (the user's earlier "
    "items excluded); expected HR@10 = (1 - s) x warm HR@10 + s x cold-item HR@10, s = the share of the period's "
    "interactions that went to the cold items. The model's new-item offset was chosen the same way on the "
    "cold-validation items.",
    "Cold-start users: each test user's target ranked over the warm catalogue from the declared profile alone (no "
    "history, nothing excluded), against most-popular and popularity-as-of (other users' interactions before the "
    "target's time); the gain is paired over the same users.",
]


def _fmt(est: Any) -> str:
    if isinstance(est, float):
        return "n/a" if math.isnan(est) else f"{est:.4f}"
    if math.isnan(est.value):
        return "n/a"
    return f"{est.value:.4f} [{est.low:.4f}, {est.high:.4f}]"


def _param(value: object) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def overall_table(results: list[ModelResult], ks: list[int], with_coverage: bool = True) -> pd.DataFrame:
    rows = []
    for r in results:
        row = {"recommender": r.key, "model": r.name, "role": r.role,
               "params": ", ".join(f"{k}={_param(v)}" for k, v in r.params.items()) or "-"}
        for k in ks:
            row[f"HR@{k}"] = _fmt(r.summary[f"hr@{k}"])
            row[f"NDCG@{k}"] = _fmt(r.summary[f"ndcg@{k}"])
        row["MRR"] = _fmt(r.summary["mrr"])
        if with_coverage:
            for k in ks:
                row[f"coverage@{k}"] = f"{r.coverage[f'coverage@{k}']:.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def group_table(results: list[ModelResult], metric: str) -> pd.DataFrame:
    """One row per (attribute, group), one column per recommender: `metric` with its interval."""
    table: pd.DataFrame | None = None
    for r in results:
        if r.groups.empty:
            continue
        g = r.groups[r.groups["metric"] == metric]
        col = pd.DataFrame({
            "attribute": g["attribute"].to_numpy(), "group": g["group"].to_numpy(), "users": g["users"].to_numpy(),
            r.key: [_fmt(Estimate(v, lo, hi)) for v, lo, hi in zip(g["value"], g["low"], g["high"], strict=True)],
        })
        table = col if table is None else table.merge(col, on=["attribute", "group", "users"], how="outer",
                                                      sort=False)
    return pd.DataFrame() if table is None else table


def _to_markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- plots


def _plots(evaluation: Evaluation, out_dir: Path, metric: str) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    res = evaluation.results
    k0 = evaluation.info["ks"][0]

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, name in zip(axes, (f"ndcg@{k0}", f"hr@{k0}"), strict=True):
        vals = [r.summary[name] for r in res]
        err = np.array([[v.value - v.low for v in vals], [v.high - v.value for v in vals]])
        champ = evaluation.info.get("champion_key")
        colors = ["tab:red" if r.role == "candidate" else "tab:orange" if r.key == champ else "tab:gray" for r in res]
        ax.bar([r.key for r in res], [v.value for v in vals], yerr=err, capsize=4, color=colors)
        ax.set_title(f"{name.upper()} (95% bootstrap CI)")
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    paths["overall"] = out_dir / "overall.png"
    fig.savefig(paths["overall"], dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ks = np.arange(1, 101)
    for r in res:
        m = per_user_metrics(r.ranks, list(ks))
        ax.plot(ks, [m[f"hr@{k}"].mean() for k in ks], label=r.key, lw=2.2 if r.role == "candidate" else 1.2)
    ax.set_xlabel("K")
    ax.set_ylabel("HR@K")
    ax.set_title("Hit rate by cut-off")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths["hit_rate_curve"] = out_dir / "hit_rate_curve.png"
    fig.savefig(paths["hit_rate_curve"], dpi=90)
    plt.close(fig)

    shown = [r for r in res if r.role == "candidate" or r.key == evaluation.info.get("champion_key")] or res[:1]
    attrs = list(dict.fromkeys(a for r in shown if not r.groups.empty for a in r.groups["attribute"]))
    if attrs:
        fig, axes = plt.subplots(1, len(attrs), figsize=(5 * len(attrs), 3.6), squeeze=False)
        for ax, attr in zip(axes[0], attrs, strict=True):
            width = 0.8 / len(shown)
            for j, r in enumerate(shown):
                g = r.groups[(r.groups["attribute"] == attr) & (r.groups["metric"] == metric)]
                x = np.arange(len(g))
                ax.bar(x + j * width, g["value"], width, yerr=[g["value"] - g["low"], g["high"] - g["value"]],
                       capsize=3, label=r.key)
                ax.set_xticks(x + width * (len(shown) - 1) / 2, [f"{a}\n(n={n})" for a, n in zip(g["group"],
                                                                                               g["users"],
                                                                                               strict=True)])
            ax.set_title(f"{metric.upper()} by {attr}")
            ax.legend(fontsize=8)
        fig.tight_layout()
        paths["groups"] = out_dir / "groups.png"
        fig.savefig(paths["groups"], dpi=90)
        plt.close(fig)

    if evaluation.cold:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        vals = [r.summary[f"ndcg@{k0}"] for r in evaluation.cold]
        ax.bar([r.key for r in evaluation.cold], [v.value for v in vals],
               yerr=[[v.value - v.low for v in vals], [v.high - v.value for v in vals]], capsize=4)
        ax.set_title(f"Cold start: NDCG@{k0} among {evaluation.info['split']['cold_items']} new items")
        fig.tight_layout()
        paths["cold_start"] = out_dir / "cold_start.png"
        fig.savefig(paths["cold_start"], dpi=90)
        plt.close(fig)
    return paths


# ----------------------------------------------------------------------------------------------- writers


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def metrics_payload(evaluation: Evaluation) -> dict[str, Any]:
    def result(r: ModelResult) -> dict[str, Any]:
        return {"name": r.name, "role": r.role, "params": r.params, "coverage": r.coverage,
                "metrics": {k: v.as_dict() for k, v in r.summary.items()},
                "groups": r.groups.to_dict(orient="records") if not r.groups.empty else []}

    return {"created_at": datetime.now(UTC).isoformat(), "info": evaluation.info,
            "results": {r.key: result(r) for r in evaluation.results},
            "cold_start": {r.key: result(r) for r in evaluation.cold},
            "profile_only": {r.key: result(r) for r in evaluation.profile_only}, "decision": evaluation.decision}


def _interval(d: dict[str, float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    if "low" not in d:
        return f"{d['value']:{sign}.4f}"
    return f"{d['value']:{sign}.4f} [{d['low']:{sign}.4f}, {d['high']:{sign}.4f}]"


def ablation_table(info: dict) -> pd.DataFrame:
    """One row per ablation variant: its gate metric, cold-start metric and cold start from text alone, each paired
    against the candidate (text alone also as a ratio)."""
    rows = []
    for a in info.get("ablation", []):
        row = {"variant": a["variant"], "model": a["model"], a["metric"]: _interval(a["value"])}
        if "minus_candidate" in a:
            row["− candidate (paired)"] = _interval(a["minus_candidate"], signed=True)
        if "cold" in a:
            row[f"cold {a['cold_metric']}"] = _interval(a["cold"])
            if "cold_minus_candidate" in a:
                row["cold − candidate (paired)"] = _interval(a["cold_minus_candidate"], signed=True)
        if "cold_text_only" in a:
            row["cold, text only"] = _interval(a["cold_text_only"])
            if "cold_text_only_minus_candidate" in a:
                row["text only − candidate (paired)"] = _interval(a["cold_text_only_minus_candidate"], signed=True)
            if "cold_text_only_ratio" in a:
                row["text only ÷ candidate"] = f"{a['cold_text_only_ratio']:.2f} ×"
        for key, column in _validation_columns(a):
            row[column] = _interval(a["validation"][key])
        if a.get("train_minutes") is not None:
            row["training (min)"] = f"{a['train_minutes']:.1f}"
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    first = info["ablation"][0]  # every row has the same metrics: the columns in reading order
    order = ["variant", "model", first["metric"], "− candidate (paired)", f"cold {first.get('cold_metric')}",
             "cold − candidate (paired)", "cold, text only", "text only − candidate (paired)", "text only ÷ candidate",
             *(column for _, column in _validation_columns(first)), "training (min)"]
    frame = pd.DataFrame(rows).fillna("-")
    return frame[[column for column in order if column in frame]]


def _validation_columns(row: dict) -> list[tuple[str, str]]:
    """(key in the row's `validation`, column) of the validation figures a row carries, in reading order."""
    names = {"metric": f"validation {row['metric']}", "cold": f"validation cold {row.get('cold_metric', '')}",
             "cold_text_only": "validation cold, text only"}
    return [(key, column) for key, column in names.items() if key in row.get("validation", {})]


def ablation_choice_line(info: dict) -> str:
    """Which variant validation picks for each figure ("" without validation figures)."""
    choice, rows = info.get("ablation_choice") or {}, info.get("ablation") or []
    if not choice or not rows:
        return ""
    names = dict(_validation_columns(rows[0]))
    picks = "; ".join(f"{names[key]}: **{variant}**" for key, variant in choice.items() if key in names)
    scope, where = info.get("ablation_validation") or {}, ""
    if scope:
        spread = scope["validation_cold_targets"]
        where = f" Validation: {scope['validation_users']} users" + (
            f"; its cold start {spread_clause(spread)}" if spread["targets"] else "") + "."
    return (f"Chosen on validation (the highest value; choose a variant by these, the test columns only confirm "
            f"it): {picks}.{where}")


def cold_line(info: dict) -> str:
    """Who the cold-start task ranks, how its targets spread over the new items, and the candidate's paired gain
    over new-item popularity."""
    spread = info.get("cold_targets") or {}
    line = (f"{info['cold_users']} users, target ranked among {info['split']['cold_items']} new items"
            + (f"; {spread_clause(spread)}." if spread.get("targets") else "."))
    gain = info.get("cold_gain") or {}
    if gain:
        parts = [f"{name} {_interval(d, signed=True)}" for name, d in gain["candidate_minus_baseline"].items()]
        line += f" Candidate minus {gain['baseline']}, paired 95% interval: {'; '.join(parts)}."
    every = info.get("cold_every_event") or {}
    if every:
        parts = [f"{name} {_interval(every['candidate'][name])} vs {_interval(every['baseline_value'][name])}, "
                 f"gain {_interval(d, signed=True)}" for name, d in every["candidate_minus_baseline"].items()]
        line += (f" Every interaction with the new items, each at its own time ({every['users']} users; "
                 f"{spread_clause(every['spread'])}; intervals resample whole users), candidate vs "
                 f"{every['baseline']}: {'; '.join(parts)}.")
    return line


def served_mix_table(info: dict) -> pd.DataFrame:
    """One row per setting of the new items in the served list (see components.served_mix)."""
    rows = []
    for row in (info.get("served_mix") or {}).get("rows", []):
        rows.append({"new items": row["setting"], "offset": "-" if row["offset"] is None else f"{row['offset']:+g}",
                     "warm ndcg@10": _interval(row["warm_ndcg@10"]), "warm hr@10": _interval(row["warm_hr@10"]),
                     "new-item hr@10": _interval(row["new_hr@10"]),
                     "new items in a warm top 10": f"{row['new_in_warm_top']:.1%}",
                     "expected hr@10": f"{row['expected_hr@10']:.4f}"})
    return pd.DataFrame(rows)


def served_mix_line(info: dict) -> str:
    """Which interactions the served mix ranks, and the share of them on the new items."""
    mix = info.get("served_mix") or {}
    if not mix:
        return ""
    return (f"Trained and new items in one list, as served: from {mix['since'][:10]} (the first interaction on the "
            f"{mix['new_items']} new items), {mix['warm_targets']} test users' targets and {mix['new_targets']} "
            f"interactions on the new items; {mix['new_share']:.1%} of that period's interactions went to the new "
            f"items. Intervals 95% bootstrap (new-item targets resample whole users).")


def spread_clause(spread: dict) -> str:
    """"N targets over M items, X% of them on one" (see components.evaluate.target_spread)."""
    return (f"{spread['targets']} targets over {spread['items']} items, {spread['top_item_share']:.0%} of them on "
            f"one")


def profile_only_line(info: dict) -> str:
    """The candidate's paired gain over the strongest popularity for profile-only users, one clause per metric."""
    gain = info.get("profile_only") or {}
    if not gain:
        return ""
    parts = [f"{name} {_interval(d, signed=True)}" for name, d in gain["candidate_minus_baseline"].items()]
    return (f"{gain['users']} test users ranked from their declared profile alone. Candidate minus "
            f"{gain['strongest_baseline']} (the stronger popularity by {gain['chosen_by']}), paired 95% interval: "
            f"{'; '.join(parts)}.")


def users_line(info: dict) -> str:
    """"N users", or "a seeded sample of N of M users" when the evaluation sampled them."""
    total = info.get("test_users_total", info["test_users"])
    if total == info["test_users"]:
        return f"{info['test_users']} users"
    return f"a seeded sample of {info['test_users']} of {total} users (evaluate.max_users; intervals over the sample)"


def skipped_line(info: dict) -> str:
    """A sentence per baseline left out for size (empty when none)."""
    return "".join(f" Baseline {name} skipped: {why}." for name, why in info.get("baselines_skipped", {}).items())


def write_report(evaluation: Evaluation, out_dir: Path, metric: str) -> dict[str, Path]:
    """Write every report file into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ks = evaluation.info["ks"]
    plots = _plots(evaluation, out_dir / "plots", metric)
    overall = overall_table(evaluation.results, ks)
    groups = group_table(evaluation.results, metric)
    cold = overall_table(evaluation.cold, ks, with_coverage=False) if evaluation.cold else pd.DataFrame()
    profile_only = overall_table(evaluation.profile_only, ks, with_coverage=False)
    info = evaluation.info
    mix = served_mix_table(info)
    ablation = ablation_table(info)
    ablation_note = ("Variants of the candidate trained on the same data, ranked on the same split and users; "
                     "intervals 95% bootstrap, differences paired over the same users (variant minus candidate); "
                     "cold, text only: the new items ranked without their popularity prior; validation: the same "
                     "figures on the validation users and the cold-validation items (where each model fitted its "
                     "new-item prior, and training stopped early: they read high, alike for every row).")
    no_profile = "The data set declares no user attributes."
    no_cold = "No cold items configured."
    d = evaluation.decision
    verdict = "PROMOTE" if d["promote"] else "KEEP CHAMPION"
    split_line = ", ".join(f"{k}={v}" for k, v in info["split"].items())
    ratio = ", ".join(f"{a}: {v:.3f}" for a, v in info["group_ratio"].items() if not math.isnan(v)) or "n/a"

    sections = [
        ("Gate", f"**{verdict}** — {d['reason']}"),
        ("Ranking on the test split", f"{users_line(info)}, {info['catalogue_items']} candidate items; "
                                      f"split: {split_line}.{skipped_line(info)}\n\n{_to_markdown(overall)}"),
        (f"By user group ({metric})", f"Worst/best group ratio of the candidate: {ratio}.\n\n{_to_markdown(groups)}"),
        ("Cold start", f"{cold_line(info)}\n\n{_to_markdown(cold)}" if evaluation.cold else no_cold),
        *([("Served mix", f"{served_mix_line(info)}\n\n{_to_markdown(mix)}")] if not mix.empty else []),
        ("Cold-start users (profile only)", f"{profile_only_line(info)}\n\n{_to_markdown(profile_only)}"
                                            if evaluation.profile_only else no_profile),
        *([("Ablation", f"{ablation_note}\n\n{_to_markdown(ablation)}\n\n{ablation_choice_line(info)}")]
          if not ablation.empty else []),
        *([("Trustworthy ranking", trust_markdown(info["trust"]))] if "trust" in info else []),
        ("Method", "\n".join(f"- {n}" for n in METHOD_NOTES)),
    ]
    plots.update({name: Path(p) for name, p in info.get("trust", {}).get("plots", {}).items()})
    md = ["# Evaluation report", ""]
    for title, body in sections:
        md += [f"## {title}", "", body, ""]
    md += [f"![{name}](plots/{p.name})" for name, p in plots.items()]
    (out_dir / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")

    def table_html(df: pd.DataFrame) -> str:
        return "<p><em>(none)</em></p>" if df.empty else df.to_html(index=False, border=0, classes="t")

    bodies = {"Gate": f"<p><b>{verdict}</b> — {html.escape(d['reason'])}</p>",
              "Ranking on the test split": f"<p>{html.escape(users_line(info))}, {info['catalogue_items']} "
                                           f"candidate items; split: {html.escape(split_line)}."
                                           f"{html.escape(skipped_line(info))}</p>{table_html(overall)}",
              f"By user group ({metric})": f"<p>Worst/best group ratio of the candidate: {ratio}.</p>"
                                           f"{table_html(groups)}",
              "Cold start": (f"<p>{html.escape(cold_line(info))}</p>{table_html(cold)}" if evaluation.cold
                             else f"<p>{no_cold}</p>"),
              **({"Served mix": f"<p>{html.escape(served_mix_line(info))}</p>{table_html(mix)}"}
                 if not mix.empty else {}),
              "Cold-start users (profile only)": (f"<p>{html.escape(profile_only_line(info))}</p>"
                                                  f"{table_html(profile_only)}" if evaluation.profile_only
                                                  else f"<p>{no_profile}</p>"),
              **({"Ablation": f"<p>{html.escape(ablation_note)}</p>{table_html(ablation)}"
                              f"<p>{html.escape(ablation_choice_line(info).replace('**', ''))}</p>"}
                 if not ablation.empty else {}),
              **({"Trustworthy ranking": f"<pre>{html.escape(trust_markdown(info['trust']))}</pre>"}
                 if "trust" in info else {}),
              "Method": "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in METHOD_NOTES) + "</ul>"}
    plots_html = "".join(png_img(p.read_bytes(), n) for n, p in plots.items())
    page = html_page("Evaluation report", f"{verdict}: the candidate against the champion and the baselines on the "
                     f"test split ({info['test_users']} users).",
                     [*bodies.items(), *([("Plots", plots_html)] if plots else [])],
                     style="table.t td,table.t th{text-align:right}table.t{font-size:13px}")
    (out_dir / "report.html").write_text(page, encoding="utf-8")

    payload = metrics_payload(evaluation)
    (out_dir / "metrics.json").write_text(json.dumps(payload, indent=2, default=_json_default), encoding="utf-8")
    (out_dir / "decision.json").write_text(json.dumps(d, indent=2, default=_json_default), encoding="utf-8")
    return {"html": out_dir / "report.html", "markdown": out_dir / "report.md", "metrics": out_dir / "metrics.json",
            "decision": out_dir / "decision.json", **plots}
