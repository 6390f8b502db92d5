"""`recsys compress`: ONNX variants of a trained model (fp32, int8, pruned, distilled), measured, gated, bundled."""

import json
from pathlib import Path

import typer

from recsys.common import console, errors_as_exit, state


def compress(
    ctx: typer.Context,
    model: Path = typer.Option(..., "--model", help="Trained model directory (output of `recsys train`)."),
    canonical: Path | None = typer.Option(
        None, "--canonical", help="Folder with the canonical tables (default <data_dir>/canonical)"),
    out: Path = typer.Option(Path("artifacts/compress"), "--out",
                             help="Output folder: bundle/ (serving bundle), report/ (HTML, PNG, JSON), variants/."),
) -> None:
    """Export the towers to ONNX, build the compressed variants, compare them and write the serving bundle."""
    from components.compress import run_compress

    config = state(ctx).config
    canonical = canonical or Path(config.paths.data_dir) / "canonical"
    with errors_as_exit():
        result = run_compress(config, canonical, model, out / "bundle", out / "report", work_dir=out / "variants")
    for name, m in result["variants"].items():
        mark = "[bold green]*[/]" if name == result["chosen"] else " "
        console.print(
            f"{mark} {name:<10} NDCG@10 {m['ndcg@10']:.4f}  user tower {m['user_tower_bytes'] / 1e6:7.3f} MB "
            f"{m['user_tower_b32_ms']:7.2f} ms/32  text encoder {m['text_encoder_bytes'] / 1e6:6.1f} MB "
            f"{m['text_encoder_b32_ms']:7.1f} ms/32"
        )
    console.print(f"gate: {result['reason']}", soft_wrap=True)
    if result["targets"]:
        console.print(f"int8 targets: {json.dumps(result['targets'], default=float)}", soft_wrap=True)
    console.print(f"serving bundle: [bold]{out / 'bundle'}[/]; report: [bold]{out / 'report' / 'report.html'}[/]")
