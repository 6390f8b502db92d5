"""The replay's outcome: online quality per request and per week in sim time, the previous champion as a shadow
(the counterfactual), the timeline plot, the index page and summary.json."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.schemas import INTERACTIONS, USERS
from monitoring.html import page, table
from monitoring.replay_traffic import logged_interactions_sim
from monitoring.replay_world import WEEK, Plan, ReplayLog, Simulation, WeekRecord

log = logging.getLogger(__name__)


def quality_timeline(log_path: str | Path, record: ReplayLog, k: int, horizon: pd.Timedelta,
                     cohort: np.ndarray) -> pd.DataFrame:
    """Per logged request, in sim time: evaluable, hit@k and ndcg@k against the user's interactions within
    `horizon` after it (monitoring.quality), plus the model version that answered and whether the user is
    in the cohort."""
    from components.request_logs import open_request_log
    from monitoring import quality

    with open_request_log(log_path) as request_log:
        requests = request_log.requests_frame()
        recs = request_log.recommendations_frame()
    requests = requests[requests["request_id"].isin(record.requests)].copy()
    requests["ts"] = pd.to_datetime(requests["request_id"].map(record.requests).tolist(), utc=True)
    recs = recs[recs["request_id"].isin(requests["request_id"])].copy()
    recs["ts"] = recs["request_id"].map(dict(zip(requests["request_id"], requests["ts"], strict=True)))
    interactions = logged_interactions_sim(log_path, record)
    per = quality.per_request_quality(requests, recs, interactions, k, horizon,
                                      as_of=interactions["event_timestamp"].max())
    per = per.merge(requests[["request_id", "model_version", "degraded"]], on="request_id")
    per["cohort"] = per["user_id"].isin(cohort)
    return per


def summarise_quality(per: pd.DataFrame) -> dict[str, Any]:
    from monitoring import quality

    return quality.summarise(per)


def histories_at(interactions: pd.DataFrame, requests: pd.DataFrame) -> list[np.ndarray]:
    """Per request (user_id, ts): the user's item ids strictly before ts, oldest first (the state it was served in)."""
    def ns(stamps: pd.Series) -> np.ndarray:
        return pd.to_datetime(stamps, utc=True).dt.as_unit("ns").astype("int64").to_numpy()

    ordered = interactions.sort_values(["user_id", "event_timestamp"], kind="stable")
    by_user = {int(u): (ns(g["event_timestamp"]), g["item_id"].to_numpy(np.int64))
               for u, g in ordered.groupby("user_id", sort=False)}
    empty = (np.empty(0, np.int64), np.empty(0, np.int64))
    out = []
    for user, at in zip(requests["user_id"].astype(int), ns(requests["ts"]), strict=True):
        times, items = by_user.get(user, empty)
        out.append(items[: np.searchsorted(times, at, side="left")])
    return out


def shadow_recommendations(model_dir: str | Path, requests: pd.DataFrame, users: pd.DataFrame,
                           interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """What the model at `model_dir` would have answered to each request (request_id, user_id, ts): top-k over the
    catalogue it served, from the user's profile and interactions before the request, seen items excluded (the
    batch `recommend` path, whose ranking equals the served one for the same model and state)."""
    from components.model import load_recommender
    from components.recommender import recommend_frame

    recommender = load_recommender(model_dir)
    profiles = requests[["user_id"]].merge(users, on="user_id", how="left")
    profiles["user_id"] = np.arange(len(profiles), dtype=np.int64)  # the request's position keys the answer
    ranked = recommend_frame(recommender, profiles, histories_at(interactions, requests),
                             np.asarray(recommender.item_ids, dtype=np.int64), k, exclude_seen=True)
    position = ranked["user_id"].to_numpy()
    return pd.DataFrame({"request_id": requests["request_id"].to_numpy()[position],
                         "ts": requests["ts"].to_numpy()[position], "rank": ranked["rank"].to_numpy(),
                         "item_id": ranked["item_id"].to_numpy(), "score": ranked["score"].to_numpy()})


def shadow_champion(sim: Simulation, per: pd.DataFrame, cut: pd.Timestamp, horizon: pd.Timedelta) -> tuple[
        dict[str, Any] | None, pd.DataFrame]:
    """The previous champion scored as a shadow on the post-retrain requests (served = the retrained model):
    both rankings against the same later interactions, and the gain with a paired bootstrap CI over the
    evaluable requests. Returns (summary or None when there is nothing to compare, the shadow's per request)."""
    from components.metrics import paired_difference
    from monitoring import quality

    previous = next((p for p in sim.pipelines if p["kind"] == "initial"), None)
    post = per[per["ts"] >= cut].reset_index(drop=True)
    if previous is None or not previous.get("model_dir") or post.empty:
        return None, pd.DataFrame(columns=per.columns)
    logged = logged_interactions_sim(sim.config.serving.request_log, sim.record)
    history = pd.concat([sim.plan.train_tables[INTERACTIONS], logged], ignore_index=True)
    recs = shadow_recommendations(previous["model_dir"], post, sim.plan.train_tables[USERS], history, sim.settings.k)
    shadow = quality.per_request_quality(post[["request_id", "ts", "user_id"]], recs, logged, sim.settings.k, horizon,
                                         as_of=logged["event_timestamp"].max())
    shadow = shadow.merge(post[["request_id", "cohort"]], on="request_id")
    both = post[["request_id", "evaluable", "hit", "ndcg"]].merge(
        shadow[["request_id", "hit", "ndcg"]], on="request_id", suffixes=("", "_shadow"))
    both = both[both["evaluable"].astype(bool)]
    samples, seed = sim.config.evaluate.bootstrap_samples, sim.config.train.seed
    gain: dict[str, Any] = {}
    if len(both):
        gain = {"hit_rate": paired_difference(both["hit"].to_numpy(), both["hit_shadow"].to_numpy(), samples,
                                              seed).as_dict(),
                "ndcg": paired_difference(both["ndcg"].to_numpy(), both["ndcg_shadow"].to_numpy(), samples,
                                          seed).as_dict()}
    served_q, shadow_q = summarise_quality(post), summarise_quality(shadow)
    return {"since": cut.isoformat(), "shadow_model_version": previous.get("model_version"),
            "shadow_model_dir": previous["model_dir"], "requests": len(post), "evaluable_requests": len(both),
            "served": served_q, "shadow": shadow_q, "gain": gain, "bootstrap_samples": samples,
            "note": "served = the retrained model (logged answers); shadow = the previous champion ranking the same "
                    "requests in-process from the interactions before each; gain = served - shadow, paired 95% "
                    "bootstrap CI over the evaluable requests"}, shadow


def weekly_quality(per: pd.DataFrame, plan: Plan, weeks: int) -> pd.DataFrame:
    """Hit rate and NDCG of evaluable requests per replayed week (all users and the cohort)."""
    rows = []
    for i in range(weeks):
        lo = plan.week_start(i)
        sel = per[(per["ts"] >= lo) & (per["ts"] < lo + WEEK)]
        all_s, coh_s = summarise_quality(sel), summarise_quality(sel[sel["cohort"]])
        rows.append({"week": i, "start": lo, "phase": plan.phase(i), "requests": all_s["requests"],
                     "evaluable": all_s["evaluable_requests"], "hit_rate": all_s["hit_rate"], "ndcg": all_s["ndcg"],
                     "cohort_evaluable": coh_s["evaluable_requests"], "cohort_hit_rate": coh_s["hit_rate"],
                     "cohort_ndcg": coh_s["ndcg"]})
    return pd.DataFrame(rows)


def plot_timeline(weekly: pd.DataFrame, plan: Plan, drift_at: pd.Timestamp | None, retrain_at: pd.Timestamp | None,
                  path: Path, k: int, suppressed: list[pd.Timestamp] | None = None) -> Path:
    """Quality per week with the shift, the drift detection, the retrain and suppressed decisions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    mid = weekly["start"] + WEEK / 2
    for col, label, style in (("hit_rate", f"hit rate@{k} (all)", "o-"), ("ndcg", f"NDCG@{k} (all)", "s-"),
                              ("cohort_hit_rate", f"hit rate@{k} (cohort)", "o--"),
                              ("shadow_hit_rate", f"hit rate@{k}: previous champion as a shadow, same requests",
                               "x:")):
        if col in weekly and weekly[col].notna().any():
            ax.plot(mid, weekly[col].astype(float), style, label=label)
    ax.axvspan(plan.shift_start, plan.end, color="#f4e3c1", alpha=0.5, label="shifted traffic")
    if retrain_at is not None:
        ax.axvline(retrain_at, color="#1b7f3b", linewidth=4, alpha=0.6, label="retrained model live")
    if drift_at is not None:
        ax.axvline(drift_at, color="#b00020", linestyle="--", label="drift detected: retrain triggered")
    for n, at in enumerate(suppressed or []):
        ax.axvline(at, color="#777777", linestyle=":", label="signal fired, retrain suppressed" if n == 0 else None)
    ax.set_xlabel("time in the data (week of replay)")
    ax.set_ylabel("online quality")
    ax.set_title("Replay: online quality of logged recommendations vs the interactions that followed")
    ax.legend(fontsize=7, loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_index(root: Path, summary: dict[str, Any], weeks: list[WeekRecord], weekly: pd.DataFrame,
                plot: Path) -> Path:
    """index.html: the timeline, the summary and one row per week linking its monitoring report."""
    q = weekly.set_index("week")
    rows = []
    for w in weeks:
        link = (f'<a href="{escape(str(Path(w.report_dir).relative_to(root)))}/index.html">report</a>'
                if w.report_dir else '<span class="muted">none</span>')
        dec = w.decision or {}
        verdict = ("RETRAIN" if dec.get("retrain") else f"suppressed ({dec['suppressed_by']})"
                   if dec.get("suppressed_by") else "no retrain") if dec else "-"
        rows.append((w.index, w.phase, w.sim_start[:10], w.events, ", ".join(w.model_versions),
                     q.loc[w.index, "hit_rate"], q.loc[w.index, "ndcg"], w.signals.get("drift_share"),
                     ", ".join(w.drifted_columns), escape(verdict), link))
    body = table(["week", "phase", "starts", "events", "model", "hit rate", "NDCG", "drift share",
                  "drifted features", "decision", "monitoring"], rows, raw_columns=(9, 10))
    html = page("Closed-loop replay", "The data replayed in time order through the API; monitoring, retraining "
                "policy, training pipeline and redeploy as in production.", [
                    ("Timeline", f'<img alt="timeline" src="{escape(plot.name)}">'),
                    ("Result", table(["what", "value"], _result_rows(summary))),
                    ("Online quality", _quality_table(summary)),
                    ("The retrain against the previous champion (shadow, same requests)",
                     _counterfactual_table(summary.get("counterfactual"))),
                    ("Pipeline runs and their gate", _pipelines_table(summary["pipelines"])),
                    ("Weeks", body + '<p>Every figure: <a href="summary.json">summary.json</a></p>')])
    path = root / "index.html"
    path.write_text(html, encoding="utf-8")
    return path


def _ci(est: dict[str, float] | None) -> str:
    return "n/a" if not est else f"{est['value']:+.4f} ({est['low']:+.4f} .. {est['high']:+.4f})"


def _result_rows(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    first = summary.get("first_model") or {}
    gate = first.get("gate") or {}
    promoted = summary.get("promoted_version") or {}
    initial = summary.get("initial_version") or {}
    return [
        ("shift starts", summary["shift_starts_at"][:10]),
        ("drift detected", f"week {summary['drift_detected_week']} ({summary['drift_detected_at'][:10]})"
         if summary.get("drift_detected_at") else None),
        ("retrains triggered", summary["retrains_triggered"]),
        ("decisions suppressed", ", ".join(f"week {w}: {why}" for w, why in summary["decisions_suppressed"].items())
         or "none"),
        ("first model", f"Triton v{initial.get('triton_version')} ({initial.get('model_version')})"),
        ("first model's gate", (gate.get("reason", "n/a") + (" (served anyway: the API serves two-tower bundles "
                                                              "only)" if first.get("served_despite_gate") else ""))),
        ("retrained model live", f"Triton v{promoted.get('triton_version')} ({promoted.get('model_version')}) "
         f"from {summary['retrain_live_at'][:10]}" if promoted and summary.get("retrain_live_at") else "none"),
        ("recovered (post-retrain hit rate above pre-retrain)", summary["recovered"]),
        ("Evidently UI", (summary.get("evidently") or {}).get("ui")),
        ("run time", f"{summary['seconds']:.0f} s"),
    ]


def _quality_table(summary: dict[str, Any]) -> str:
    q = summary["quality"]
    names = [("before_shift", "before the shift"), ("pre_retrain_shifted", "shifted, before the retrain"),
             ("post_retrain_shifted", "shifted, after the retrain"),
             ("pre_retrain_shifted_cohort", "shifted, before the retrain: cohort"),
             ("post_retrain_shifted_cohort", "shifted, after the retrain: cohort")]
    rows = [(label, q[key]["requests"], q[key]["evaluable_requests"], q[key]["hit_rate"], q[key]["ndcg"])
            for key, label in names if key in q]
    return (table(["traffic", "requests", "evaluable", f"hit rate@{q['k']}", f"NDCG@{q['k']}"], rows)
            + f'<p class="muted">outcome: the user\'s interactions within {q["horizon_hours"]:.0f} h of data time '
            "after the request</p>")


def _counterfactual_table(c: dict[str, Any] | None) -> str:
    if not c:
        return '<p class="muted">no retrain went live: nothing to compare</p>'
    rows = [("served: the retrained model", c["served"]["hit_rate"], c["served"]["ndcg"]),
            (f"shadow: the previous champion ({c['shadow_model_version']})", c["shadow"]["hit_rate"],
             c["shadow"]["ndcg"]),
            ("gain (paired 95% bootstrap CI)", _ci(c["gain"].get("hit_rate")), _ci(c["gain"].get("ndcg")))]
    return (table(["", "hit rate", "NDCG"], rows)
            + f'<p class="muted">{c["evaluable_requests"]} evaluable of {c["requests"]} requests since '
            f'{c["since"][:10]}; {escape(c["note"])}</p>')


def _pipelines_table(pipelines: list[dict[str, Any]]) -> str:
    rows = []
    for p in pipelines:
        gate = p.get("gate") or {}
        rows.append((p["kind"], p.get("week", ""), gate.get("metric"), gate.get("candidate"),
                     f"{gate.get('champion_name', '')} ({gate.get('champion_source', '')})" if gate else None,
                     gate.get("champion"), _ci(gate.get("difference")) if gate.get("difference") else None,
                     "promote" if gate.get("promote") else "keep the champion" if gate else None,
                     p.get("triton_version"), p.get("seconds")))
    return table(["run", "week", "gate metric", "candidate", "champion", "champion value",
                  "paired CI of the difference", "gate", "live Triton version", "seconds"], rows)


def finish(sim: Simulation, retrain_live_at: pd.Timestamp | None, seconds: float) -> dict[str, Any]:
    """Quality timeline, plot, index page and summary.json."""
    from monitoring.workspace import project_name, workspace_dir

    plan, cfg = sim.plan, sim.config
    horizon = pd.Timedelta(hours=cfg.monitoring.quality_horizon_hours)
    per = quality_timeline(cfg.serving.request_log, sim.record, sim.settings.k, horizon, plan.cohort_users)
    weekly = weekly_quality(per, plan, len(sim.weeks))
    counterfactual, shadow = (shadow_champion(sim, per, retrain_live_at, horizon) if retrain_live_at is not None
                              else (None, per.iloc[:0]))
    weekly["shadow_hit_rate"] = (weekly_quality(shadow, plan, len(sim.weeks))["hit_rate"] if not shadow.empty
                                 else None)
    drift_week = next((w for w in sim.weeks if any(f["name"] == "drift_share" for f in (w.decision or {})
                                                   .get("fired", []))), None)
    drift_at = pd.Timestamp(drift_week.sim_end) if drift_week else None
    shifted = per[per["ts"] >= plan.shift_start]
    cut = retrain_live_at if retrain_live_at is not None else plan.end
    pre, post = shifted[shifted["ts"] < cut], shifted[shifted["ts"] >= cut]
    promoted = [p for p in sim.pipelines if p["kind"] == "retrain" and p.get("promoted")]
    quality = {
        "k": sim.settings.k, "horizon_hours": cfg.monitoring.quality_horizon_hours,
        "pre_retrain_shifted": summarise_quality(pre), "post_retrain_shifted": summarise_quality(post),
        "pre_retrain_shifted_cohort": summarise_quality(pre[pre["cohort"]]),
        "post_retrain_shifted_cohort": summarise_quality(post[post["cohort"]]),
        "before_shift": summarise_quality(per[per["ts"] < plan.shift_start]),
    }
    pre_hr, post_hr = quality["pre_retrain_shifted"]["hit_rate"], quality["post_retrain_shifted"]["hit_rate"]
    summary = {
        "drift_detected_at": drift_at.isoformat() if drift_at is not None else None,
        "drift_detected_week": drift_week.index if drift_week else None,
        "shift_starts_at": plan.shift_start.isoformat(),
        "retrains_triggered": sum(bool((w.decision or {}).get("retrain")) for w in sim.weeks),
        "decisions_suppressed": {str(w.index): w.decision["suppressed_by"] for w in sim.weeks
                                 if w.decision and w.decision.get("suppressed_by")},
        "promoted_version": ({"triton_version": promoted[-1]["triton_version"],
                              "model_version": promoted[-1]["model_version"],
                              "registry_version": (promoted[-1].get("champion") or {}).get("version")}
                             if promoted else None),
        "initial_version": {k: sim.pipelines[0].get(k) for k in ("triton_version", "model_version")}
        if sim.pipelines else None,
        "retrain_live_at": retrain_live_at.isoformat() if retrain_live_at is not None else None,
        "quality": quality,
        "recovered": bool(pre_hr is not None and post_hr is not None and post_hr > pre_hr),
        "counterfactual": counterfactual,
        "first_model": ({k: sim.pipelines[0].get(k) for k in ("gate", "served_despite_gate", "model_version")}
                        if sim.pipelines else None),
        "evidently": {"workspace": str(workspace_dir(cfg)), "project": project_name(cfg),
                      "ui": f"recsys monitor ui --workspace {workspace_dir(cfg)}"},
        "settings": asdict(sim.settings),
        "plan": {"train_end": plan.train_end.isoformat(), "end": plan.end.isoformat(),
                 "training_interactions": len(plan.train_tables[INTERACTIONS]),
                 "replayed_events": sum(len(w) for w in plan.weeks), "cohort_users": len(plan.cohort_users),
                 "new_items": len(plan.new_items)},
        "pipelines": sim.pipelines,
        "weekly_quality": json.loads(weekly.to_json(orient="records", date_format="iso")),
        "weeks": [asdict(w) for w in sim.weeks],
        "seconds": round(seconds, 1),
    }
    suppressed = [pd.Timestamp(w.sim_end) for w in sim.weeks if w.decision and w.decision.get("suppressed_by")]
    plot = plot_timeline(weekly, plan, drift_at, retrain_live_at, sim.root / "timeline.png", sim.settings.k,
                         suppressed)
    (sim.root / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    summary["index"] = str(write_index(sim.root, summary, sim.weeks, weekly, plot))
    summary["timeline"] = str(plot)
    return summary
