"""The compression step's report: comparison.json, a bar chart of sizes, latencies and NDCG per variant, the
report.html that embeds both, and the flat numbers of the KFP Metrics artifact."""

import json
from html import escape
from pathlib import Path

from components.compress_gate import LATENCY_TARGET, METRIC, SIZE_TARGET
from components.compress_variants import REFERENCE
from components.html_report import page, png_bytes, png_img, table


def _chart(comparison: dict) -> bytes:
    """Bar charts of sizes, batch-32 latencies and validation NDCG@10 per variant (the chosen one in green), PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = comparison["variants"]
    names = list(res)
    colors = ["tab:green" if n == comparison["chosen"] else "tab:gray" for n in names]
    panels = [("user tower size (MB)", "user_tower_bytes", 1e-6),
              ("text encoder size (MB)", "text_encoder_bytes", 1e-6),
              ("user tower, batch 32 (ms)", "user_tower_b32_ms", 1),
              ("text encoder, batch 32 (ms)", "text_encoder_b32_ms", 1),
              ("validation NDCG@10", METRIC, 1)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (title, key, scale) in zip(axes, panels, strict=True):
        values = [res[n][key] * scale for n in names]
        ax.bar(names, values, color=colors)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", rotation=30)
        for i, value in enumerate(values):
            ax.annotate(f"{value:.3g}", (i, value), ha="center", va="bottom", fontsize=8)
    ref = res[REFERENCE][METRIC]
    axes[-1].axhline(ref * (1 - comparison["tolerance"]), color="tab:red", linestyle="--", linewidth=1)
    axes[-1].set_ylim(min(res[n][METRIC] for n in names) * 0.9, max(res[n][METRIC] for n in names) * 1.05)
    fig.suptitle(f"compression variants (chosen: {comparison['chosen']}; red line = NDCG tolerance)", fontsize=11)
    fig.tight_layout()
    return png_bytes(fig, dpi=90)


def _variant_rows(comparison: dict) -> list[list[str]]:
    res, ref = comparison["variants"], comparison["variants"][REFERENCE]
    rows = []
    for name, m in res.items():
        rel = (m[METRIC] - ref[METRIC]) / ref[METRIC] if ref[METRIC] else 0.0
        cos = f"{m['text_cosine_mean']:.4f} / {m['text_cosine_min']:.4f}" if "text_cosine_mean" in m else "1 / 1"
        rows.append([f"{name} (chosen)" if name == comparison["chosen"] else name,
                     f"{m['user_tower_bytes'] / 1e6:.3f}", f"{m['text_encoder_bytes'] / 1e6:.1f}",
                     f"{m['user_tower_b1_ms']:.2f}", f"{m['user_tower_b32_ms']:.2f}", f"{m['text_encoder_b1_ms']:.2f}",
                     f"{m['text_encoder_b32_ms']:.1f}",
                     f"{m[METRIC]:.4f} [{m[f'{METRIC}_low']:.4f}, {m[f'{METRIC}_high']:.4f}]", f"{rel:+.2%}", cos])
    return rows


def _target_rows(comparison: dict) -> list[list[str]]:
    rows = []
    for part, t in comparison["targets"].items():
        cells = [f"{t[k]:.3f} {'✔' if t.get(ok) else '✘'}" if k in t else "-"
                 for k, ok in (("size_ratio", "size_ok"), ("latency_ratio_b32", "latency_ok"),
                               ("ndcg_relative_drop", "ndcg_ok"))]
        rows.append([part, *cells])
    return rows


def write_report(comparison: dict, report_dir: str | Path) -> Path:
    """comparison.json, comparison.png and report.html (tables + embedded chart) in `report_dir`."""
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2, default=float), encoding="utf-8")
    png = _chart(comparison)
    (out / "comparison.png").write_bytes(png)
    variants = table(["variant", "user tower MB", "text encoder MB", "tower b1 ms", "tower b32 ms", "text b1 ms",
                      "text b32 ms", "val NDCG@10 [95% CI]", "vs fp32", "text cos vs teacher mean / min"],
                     _variant_rows(comparison))
    timing = (f"Latency: ONNX Runtime, 1 intra-op thread, median of {comparison['latency_repeats']} interleaved runs "
              "in one process; batch 32 = 32 validation users (user tower) or 32 catalogue texts (text encoder). "
              f"NDCG@10 on {comparison['validation_users']} validation users against {comparison['catalogue_items']} "
              "warm items (seen items excluded). Pruned weights are stored densely: unstructured zeros neither shrink "
              "the file nor speed up dense kernels.")
    parts = ("NDCG per part: user_tower = the int8 tower scored against the fp32 item table; text_encoder = the item "
             "table re-embedded from the int8 encoder's text vectors (fp32 tower); int8_bundle = both. A variant's "
             "item table is rebuilt through the model's item tower from that variant's text encoder, so "
             "catalogue items and items onboarded later (encode_texts_onnx) share one space.")
    if comparison.get("catalogue_encoding", "").startswith("once"):
        parts = ("Catalogue encoding: " + comparison["catalogue_encoding"] + ". Every variant's item table comes "
                 "from the model's own text vectors (the catalogue is not re-encoded per variant); a variant's text "
                 "encoder embeds only the items onboarded later, and is judged by its mean cosine to the model's "
                 "text vectors on the sample (text encoder row: no NDCG).")
    targets = table(["part", "size ratio", "latency ratio b32", "NDCG@10 relative drop"], _target_rows(comparison))
    html = page(f"Compression of model {comparison['model_version']}",
                f"Chosen: {comparison['chosen']} - {comparison['reason']}",
                [("Variants", variants + f'<p class="note">{escape(timing)}</p>'),
                 (f"int8 targets (size <= {SIZE_TARGET:.0%}, latency ratio <= {LATENCY_TARGET}, NDCG drop <= "
                  f"{comparison['tolerance']:.0%})", targets + f'<p class="note">{escape(parts)}</p>'),
                 ("Sizes, latencies and quality", png_img(png, "compression variants"))])
    (out / "report.html").write_text(html, encoding="utf-8")
    return out / "report.html"


def kfp_metrics(comparison: dict) -> dict[str, float]:
    """Flat numbers for a KFP Metrics artifact (variant-prefixed)."""
    out = {"chosen_is_" + comparison["chosen"]: 1.0}
    for name, m in comparison["variants"].items():
        for key in (METRIC, "user_tower_bytes", "text_encoder_bytes", "user_tower_b32_ms", "text_encoder_b32_ms"):
            out[f"{name}_{key}"] = float(m[key])
    return out
