"""`recsys demo`: the main job end to end on the embedded default (what `make demo` runs)."""

from pathlib import Path

import typer

from recsys.common import console, errors_as_exit, state


def demo(ctx: typer.Context) -> None:
    """Run the training pipeline with the KFP local runner on MovieLens-100K and show its results."""
    from pipelines.runner import run_pipeline

    config = state(ctx).config
    with errors_as_exit():
        result = run_pipeline("training", config)
    console.rule("training pipeline")
    for task, outputs in result["artifacts"].items():
        for output, path in outputs.items():
            console.print(f"  {task:<14} {output:<12} {path}", soft_wrap=True)
    docs = result["artifacts"].get("validate-op", {}).get("data_docs")
    if docs:
        console.print(f"Data Docs: [bold]{Path(docs) / 'index.html'}[/]", soft_wrap=True)
