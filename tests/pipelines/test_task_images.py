"""The image of every compiled task comes from the configuration resolved on the command line."""

import subprocess
import sys
from pathlib import Path

import yaml

IMAGE = "registry.example/recsys:1"
GPU_IMAGE = "registry.example/recsys-cuda:1"
RECSYS = str(Path(sys.executable).parent / "recsys")  # the console script of this environment


def _executor_images(path: Path) -> dict[str, str]:
    spec = next(yaml.safe_load_all(path.read_text()))
    return {name: e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}


def test_compile_with_set_puts_the_configured_image_on_every_task(tmp_path):
    """`recsys --set kfp.image=... pipeline compile`: every task of both pipelines runs in that image."""
    command = [RECSYS, "--set", f"kfp.image={IMAGE}", "--set",
               f"kfp.gpu_image={GPU_IMAGE}", "pipeline", "compile", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("training", "monitoring"):
        images = _executor_images(tmp_path / f"{name}_pipeline.yaml")
        trains = {n for n in images if n.startswith("exec-train-op")}
        assert trains, f"{name}: no train task"
        assert {images[n] for n in trains} == {GPU_IMAGE}
        assert {i for n, i in images.items() if n not in trains} == {IMAGE}, images


def test_compile_with_config_file_uses_its_image(tmp_path):
    """The same through `--config FILE` (how the cluster guide points the pipeline at a registry)."""
    config = tmp_path / "cluster.yaml"
    config.write_text(f"kfp:\n  image: {IMAGE}\n")
    command = [RECSYS, "--config", str(config), "pipeline", "compile", "--out",
               str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    images = _executor_images(tmp_path / "out" / "training_pipeline.yaml")
    assert IMAGE in images.values() and "recsys-components:unset" not in images.values()
