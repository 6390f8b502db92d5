"""The evaluation report's trustworthy-ranking section: item exposure (long-tail share, Gini, coverage), the
NDCG-vs-diversity curve of the MMR re-ranker across strengths (intra-list diversity, coverage, novelty), and, with
`trust.fairness.enabled`, per-group NDCG@10 with and without the fairness mitigation (chosen on validation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.bundle_ops import ItemIndex, top_k
from components.dataset import group_labels
from components.fairness_mitigation import choose, stage_events
from components.metrics import coverage, gini, group_ratio, head_items, paired_difference
from components.rerank import diversify, intra_list_diversity, list_ndcg, novelty, pool_size

log = logging.getLogger(__name__)
K = 10
STRENGTHS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
METRIC = f"ndcg@{K}"
TRUST_CELLS = 1 << 26  # users x items scored at once; above it the analysis ranks the users' MMR pools only


def catalogue_vectors(recommender: Any, catalogue: np.ndarray) -> np.ndarray | None:
    """The recommender's item embeddings in catalogue order (None when it has none, or misses an item)."""
    ids, vecs = getattr(recommender, "item_ids", None), getattr(recommender, "item_embeddings", None)
    if ids is None or vecs is None:
        return None
    rows = ItemIndex(np.asarray(ids)).rows(catalogue)
    return None if (rows < 0).any() else np.asarray(vecs, dtype=np.float32)[rows]


def exposure_of(ids: np.ndarray, catalogue: np.ndarray, head: np.ndarray) -> dict[str, float]:
    """Long-tail share of the list slots, Gini of slots over the catalogue, catalogue coverage."""
    slots = ids[ids >= 0]
    counts = pd.Series(slots).value_counts().reindex(catalogue, fill_value=0).to_numpy()
    return {"long_tail_share": float((~np.isin(slots, head)).mean()) if len(slots) else float("nan"),
            "gini": gini(counts), "coverage": coverage(ids, catalogue)}


def top_lists(rec: Any, data: Any, k: int) -> np.ndarray:
    """Each user's top-`k` item ids [users, k] over the whole catalogue (seen items excluded), scored
    `TRUST_CELLS` scores at a time: the users x catalogue matrix is never held whole."""
    step = max(1, TRUST_CELLS // max(len(data.catalogue), 1))
    parts = [np.empty((0, min(k, len(data.catalogue))), dtype=np.int64)]
    for start in range(0, len(data.users), step):
        users, histories = data.users.iloc[start : start + step], data.histories[start : start + step]
        parts.append(top_k(rec.score(users, histories, data.catalogue), k, histories, data.catalogue)[0])
    return np.concatenate(parts)


def ranking_shortlist(rec: Any, data: Any) -> np.ndarray:
    """The items the trust analysis ranks: the whole catalogue while users x catalogue fits `TRUST_CELLS`, above
    that the union of every user's MMR pool (in catalogue order, so that lists and ties come out as over the whole
    catalogue: each list is drawn from its user's pool)."""
    if len(data.users) * len(data.catalogue) <= TRUST_CELLS:
        return data.catalogue
    pools = top_lists(rec, data, pool_size(K, len(data.catalogue)))
    shortlist = data.catalogue[np.isin(data.catalogue, pools[pools >= 0])]
    log.info("trust analysis over the %d items of the users' MMR pools (of %d)", len(shortlist), len(data.catalogue))
    return shortlist


def diversity_curve(scores: np.ndarray, data: Any, vectors: np.ndarray, head: np.ndarray,
                    strengths: tuple[float, ...] = STRENGTHS,
                    ranked: np.ndarray | None = None) -> list[dict[str, float]]:
    """NDCG@10, intra-list diversity, coverage, novelty and exposure of the MMR lists at each strength. `scores`
    and `vectors` are over `ranked` (a `ranking_shortlist`; default the whole catalogue); exposure, coverage and
    novelty count over the whole catalogue."""
    ranked = data.catalogue if ranked is None else ranked
    train = data.split.train
    item_users = train.groupby("item_id")["user_id"].nunique().reindex(data.catalogue, fill_value=0).to_numpy()
    curve = []
    for strength in strengths:
        ids, _ = diversify(scores, K, data.histories, ranked, vectors, strength)
        curve.append({"strength": strength, METRIC: float(list_ndcg(ids, data.targets).mean()),
                      "intra_list_diversity": float(intra_list_diversity(ids, ranked, vectors).mean()),
                      "novelty": float(novelty(ids, data.catalogue, item_users, train["user_id"].nunique()).mean()),
                      **exposure_of(ids, data.catalogue, head)})
    return curve


def _group_rows(result: Any, attribute: str) -> pd.DataFrame:
    g = result.groups
    return g[(g["attribute"] == attribute) & (g["metric"] == METRIC)][["group", "users", "value", "low", "high"]]


def fairness_section(rec: Any, data: Any, validation: Any, users: pd.DataFrame, config: Any, head: np.ndarray,
                     evaluate: Callable[[Any], Any], before: Any) -> dict[str, Any]:
    """Choose the mitigation on validation; per-group NDCG@10 (with CIs) and ratios without and with it on test
    (`evaluate(recommender)` = the evaluator's main-ranking result on `data`)."""
    mitigated, choice = choose(rec, validation, data.split.train, users, config)
    after = evaluate(mitigated)
    attr = choice.attribute
    table = _group_rows(before, attr).merge(_group_rows(after, attr), on=["group", "users"],
                                            suffixes=("_without", "_with"))
    labels = np.asarray(group_labels(data.users[attr], config.dataset.user_attributes[attr]), dtype=object)
    counted = table[table["users"] >= config.monitoring.min_group_size]
    worst = counted.sort_values("value_without").iloc[0]["group"] if len(counted) else None
    out: dict[str, Any] = {
        "attribute": attr, "prior": choice.prior, "weights": choice.weights,
        "validation": {k: v for k, v in choice.validation.items() if k != "curve"},
        "validation_curve": choice.validation.get("curve", []),
        "groups": table.to_dict(orient="records"),
        "ratio_without": {a: group_ratio(before.groups, a, METRIC) for a in config.dataset.fairness_groups},
        "ratio_with": {a: group_ratio(after.groups, a, METRIC) for a in config.dataset.fairness_groups},
        "overall_without": before.summary[METRIC].as_dict(), "overall_with": after.summary[METRIC].as_dict(),
        "overall_relative_change": after.value(METRIC) / before.value(METRIC) - 1.0 if before.value(METRIC) else None,
        "overall_difference": paired_difference(after.per_user[METRIC], before.per_user[METRIC],
                                                config.evaluate.bootstrap_samples, config.train.seed).as_dict(),
    }
    if worst is not None:
        members = labels == worst
        out["worst_group"] = worst
        out["worst_group_difference"] = paired_difference(
            after.per_user[METRIC][members], before.per_user[METRIC][members], config.evaluate.bootstrap_samples,
            config.train.seed).as_dict()
    stage_events(mitigated, data)
    out["exposure_with"] = exposure_of(top_lists(mitigated, data, K), data.catalogue, head)
    return out


def trust_analysis(rec: Any, data: Any, validation: Any, users: pd.DataFrame, config: Any,
                   evaluate: Callable[[Any], Any], plots_dir: Path | None = None, before: Any = None) -> dict[str, Any]:
    """Exposure, the diversity curve and (when enabled) the fairness mitigation of `rec` on `data` (the test
    stage; `validation` chooses the mitigation); PNGs in `plots_dir`. `evaluate(recommender)` is the evaluator's
    main-ranking result on `data`; `before` = rec's, when already computed."""
    head = head_items(data.split.train, data.catalogue, config.monitoring.long_tail_head_fraction)
    stage_events(rec, data)  # ranked as the evaluator ranks it
    ranked = ranking_shortlist(rec, data)
    scores = rec.score(data.users, data.histories, ranked)
    default_ids = top_k(scores, K, data.histories, ranked)[0]
    out: dict[str, Any] = {"k": K, "exposure": exposure_of(default_ids, data.catalogue, head)}
    vectors = catalogue_vectors(rec, ranked)
    if vectors is not None:
        out["diversity_curve"] = diversity_curve(scores, data, vectors, head, ranked=ranked)
        configured = diversify(scores, K, data.histories, ranked, vectors, config.trust.diversity)[0]
        out["default_ranking_unchanged"] = bool(np.array_equal(configured, default_ids))
    if config.trust.fairness.enabled:
        before = before or evaluate(rec)
        out["fairness"] = fairness_section(rec, data, validation, users, config, head, evaluate, before)
    if plots_dir is not None:
        out["plots"] = {name: str(p) for name, p in plots(out, Path(plots_dir)).items()}
    return out


def plots(analysis: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """diversity_curve.png (NDCG@10 against diversity, coverage, novelty) and fairness_groups.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    curve = analysis.get("diversity_curve")
    if curve:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        for ax, key, label in zip(axes, ("intra_list_diversity", "coverage", "novelty"),
                                  ("intra-list diversity (1 - cosine)", "catalogue coverage@10",
                                   "novelty (bits)"), strict=True):
            x, y = [c[key] for c in curve], [c[METRIC] for c in curve]
            ax.plot(x, y, "o-")
            for c in curve:
                ax.annotate(f"{c['strength']:g}", (c[key], c[METRIC]), fontsize=8, xytext=(3, 3),
                            textcoords="offset points")
            ax.set_xlabel(label)
            ax.set_ylabel("NDCG@10")
        fig.suptitle("NDCG@10 against diversity across MMR strengths (labels)")
        fig.tight_layout()
        paths["diversity_curve"] = out_dir / "diversity_curve.png"
        fig.savefig(paths["diversity_curve"], dpi=90)
        plt.close(fig)
    fair = analysis.get("fairness")
    if fair and fair["groups"]:
        g = pd.DataFrame(fair["groups"])
        x = np.arange(len(g))
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(g)), 3.8))
        for offset, side in ((-0.2, "without"), (0.2, "with")):
            ax.bar(x + offset, g[f"value_{side}"], 0.4, label=f"{side} mitigation", capsize=3,
                   yerr=[g[f"value_{side}"] - g[f"low_{side}"], g[f"high_{side}"] - g[f"value_{side}"]])
        ax.set_xticks(x, [f"{a}\n(n={n})" for a, n in zip(g["group"], g["users"], strict=True)])
        ax.set_title(f"NDCG@10 by {fair['attribute']} (95% bootstrap CI)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths["fairness_groups"] = out_dir / "fairness_groups.png"
        fig.savefig(paths["fairness_groups"], dpi=90)
        plt.close(fig)
    return paths


def markdown(analysis: dict[str, Any]) -> str:
    """The report section's text."""
    e = analysis["exposure"]
    lines = [f"Exposure of the top-{analysis['k']} lists: long-tail share {e['long_tail_share']:.3f}, "
             f"Gini {e['gini']:.3f}, coverage {e['coverage']:.3f}."]
    if "diversity_curve" in analysis:
        lines += ["", "| MMR strength | NDCG@10 | intra-list diversity | coverage | novelty | long-tail share | Gini |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {c['strength']:g} | {c[METRIC]:.4f} | {c['intra_list_diversity']:.3f} | {c['coverage']:.3f} | "
                  f"{c['novelty']:.2f} | {c['long_tail_share']:.3f} | {c['gini']:.3f} |"
                  for c in analysis["diversity_curve"]]
        lines += ["", f"Default ranking unchanged (trust.diversity): {analysis['default_ranking_unchanged']}."]
    fair = analysis.get("fairness")
    if fair:
        lines += ["", f"Fairness mitigation on `{fair['attribute']}` (prior {fair['prior']}, weights "
                      f"{ {k: round(v, 3) for k, v in fair['weights'].items()} }, chosen on validation): overall "
                      f"NDCG@10 {fair['overall_without']['value']:.4f} -> {fair['overall_with']['value']:.4f} "
                      f"({fair['overall_relative_change']:+.1%}); worst/best ratio "
                      f"{fair['ratio_without'].get(fair['attribute'], float('nan')):.3f} -> "
                      f"{fair['ratio_with'].get(fair['attribute'], float('nan')):.3f}.", "",
                  "| group | users | without | with |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['group']} | {r['users']} | {r['value_without']:.4f} [{r['low_without']:.4f}, "
                  f"{r['high_without']:.4f}] | {r['value_with']:.4f} [{r['low_with']:.4f}, {r['high_with']:.4f}] |"
                  for r in fair["groups"]]
        if not fair["weights"]:
            lines += ["", "No weight raised the worst group's validation NDCG@10 within the allowed overall loss, so "
                          "the ranking is unchanged. The measured validation frontier (one weight for every "
                          "under-served group):", "", "| prior | weight | overall NDCG@10 | worst group NDCG@10 |",
                      "| --- | --- | --- | --- |"]
            lines += [f"| {c['prior']} | {c['weight']:g} | {c['overall']:.4f} | {c['worst_group']:.4f} |"
                      for c in fair["validation_curve"]]
    return "\n".join(lines)
