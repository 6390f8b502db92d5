"""The component images: Dockerfile (CPU) and Dockerfile.cuda parse into sane instructions and pass every check.

Docker cannot build here, so the checks read the files: pinned base image, non-root user, the project
installed without dev extras, torch at the project's pin (CPU index for the CPU image), COPY sources that
exist and survive .dockerignore, exec-form CMD. Each check is also shown to reject a broken variant.
"""

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.k8s import dockerfile as D

IMAGES = {"Dockerfile": True, "Dockerfile.cuda": False}  # file -> CPU image?


def all_checks(instructions, cpu: bool) -> list[str]:
    return (
        D.check_base_pinned(instructions)
        + D.check_non_root(instructions)
        + D.check_project_installed(instructions)
        + D.check_torch(instructions, cpu=cpu)
        + D.check_copies(instructions)
        + D.check_exec_form(instructions)
    )


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dockerfile_parses_into_sane_instructions(name):
    instructions = D.read(D.ROOT / name)
    assert instructions[0].cmd == "FROM"
    assert instructions[0].words()[0].startswith("python:3.11")
    assert {i.cmd for i in instructions} >= {"FROM", "RUN", "WORKDIR", "COPY", "USER", "CMD"}
    assert instructions[-1].cmd == "CMD" and instructions[-1].words()[0] == "recsys"
    run = next(i for i in instructions if i.cmd == "RUN" and " . " in f" {i.value} ")
    assert "useradd --uid 10001" in run.value  # continuation lines were joined


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dockerfile_passes_every_check(name):
    assert all_checks(D.read(D.ROOT / name), cpu=IMAGES[name]) == []


def test_spark_image_carries_the_spark_runtime_and_the_project():
    """Dockerfile.spark (the SparkApplication's image): every check of the component images, Spark's runtime and
    entrypoint copied from the pinned Apache Spark image, PySpark at the runtime's and the project's version."""
    instructions = D.read(D.ROOT / "Dockerfile.spark")
    assert all_checks(instructions, cpu=True) == []
    spark_stage = instructions[0].words()
    assert spark_stage[0].startswith("apache/spark:4.0.1-") and spark_stage[-2:] == ["AS", "spark"]
    copied = {tuple(i.words()[1:]) for i in instructions if i.cmd == "COPY" and i.words()[0] == "--from=spark"}
    assert {("/opt/spark", "/opt/spark"), ("/opt/entrypoint.sh", "/opt/entrypoint.sh")} <= copied
    assert instructions[-1].cmd == "ENTRYPOINT" and instructions[-1].words() == ["/opt/entrypoint.sh"]
    spark_pin = next(d for d in tomllib.loads((D.ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["spark"] if d.startswith("pyspark"))
    assert any(spark_pin.split()[0] in words for _, words in D._pip_installs(instructions) if "." in words)


def test_dockerignore_keeps_the_context_small_but_complete():
    patterns = D.read_dockerignore()
    for path in (
        ".venv/bin/python",
        "data/canonical/items.parquet",
        "artifacts/x",
        ".git/HEAD",
        "tests/test_x.py",
        "feature_repo/data/registry.db",
        "components/__pycache__/a.cpython-311.pyc",
    ):
        assert D.ignored(path, patterns), path
    for path in (
        "components/config.py",
        "feature_repo/definitions.py",
        "pyproject.toml",
        "README.md",
        "recsys/main.py",
    ):
        assert not D.ignored(path, patterns), path


def test_local_secrets_stay_out_of_the_image():
    """The launcher's Triton admin key file lives in the build folder, which never reaches the build context."""
    from components.config import load_config
    from serving.triton_admin import key_file

    key = key_file(load_config().serving.triton_build_dir)
    assert not key.is_absolute() and D.ignored(key.as_posix(), D.read_dockerignore()), key


def test_project_sources_follow_pyproject():
    needed = D.project_sources()
    assert {"pyproject.toml", "README.md", "components", "recsys", "serving", "pipelines", "monitoring"} <= set(needed)


BASE = (D.ROOT / "Dockerfile").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda t: t.replace("FROM python:3.11.11-slim-bookworm", "FROM python:latest"), "floating :latest"),
        (lambda t: t.replace("FROM python:3.11.11-slim-bookworm", "FROM python"), "has no tag"),
        (lambda t: t.replace("FROM python:3.11.11-slim-bookworm", "ARG BASE\nFROM ${BASE}"), "unset variable"),
        (lambda t: t.replace("FROM python:3.11.11-slim-bookworm", ""), "no FROM"),
        (lambda t: t.replace("USER 10001:10001", "USER root"), "is root"),
        (lambda t: t.replace("USER 10001:10001", "USER 0"), "is root"),
        (lambda t: t.replace("USER 10001:10001", ""), "runs as root"),
        (
            lambda t: t.replace("RUN pip install . torch", "RUN pip install .[dev] torch"),
            "never installed with `pip install .`",
        ),
        (lambda t: t.replace("RUN pip install . torch", "RUN pip install . .[dev] torch"), "dev extra"),
        (lambda t: t.replace("RUN pip install . torch", "RUN pip install -e . torch"), "editable install"),
        (lambda t: t.replace("--index-url https://download.pytorch.org/whl/cpu ", ""), "PyTorch CPU index"),
        (lambda t: t.replace("torch==2.13.0", "torch==2.0.0"), "never installed on its own at the project's pin"),
        (lambda t: t.replace("COPY serving ./serving\n", ""), "serving is not copied"),
        (lambda t: t.replace("COPY recsys ./recsys", "COPY recsys_cli ./recsys"), "'recsys_cli' does not exist"),
        (
            lambda t: t.replace("COPY recsys ./recsys", "COPY recsys ./recsys\nCOPY data ./data"),
            "excluded by .dockerignore",
        ),
        (lambda t: t.replace('CMD ["recsys", "--help"]', "CMD recsys --help"), "shell form"),
    ],
)
def test_each_check_rejects_a_broken_dockerfile(edit, expected):
    text = edit(BASE)
    assert text != BASE, "the edit did not apply: update the test to the Dockerfile"
    problems = all_checks(D.parse_dockerfile(text), cpu=True)
    assert any(expected in p for p in problems), problems


def test_cuda_image_must_not_take_the_cpu_build():
    text = (D.ROOT / "Dockerfile.cuda").read_text(encoding="utf-8")
    broken = text.replace(
        "RUN pip install torch==2.13.0",
        "RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0",
    )
    assert broken != text
    assert any("CPU build" in p for p in D.check_torch(D.parse_dockerfile(broken), cpu=False))


def test_torch_after_the_project_is_rejected():
    text = BASE.replace("RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0\n", "")
    text += "RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0\n"
    assert any("after the project" in p for p in D.check_torch(D.parse_dockerfile(text), cpu=True))


def test_parser_handles_continuations_comments_and_args():
    text = 'ARG TAG=3.11-slim\nFROM python:${TAG} AS base\n# note\nRUN a \\\n  # inner comment\n  && b\nCMD ["x"]\n'
    instructions = D.parse_dockerfile(text)
    assert [i.cmd for i in instructions] == ["ARG", "FROM", "RUN", "CMD"]
    assert instructions[1].value == "python:3.11-slim AS base"
    assert instructions[2].value == "a && b" and instructions[2].line == 4
    assert instructions[3].words() == ["x"]
    with pytest.raises(D.DockerfileError, match="line 1"):
        D.parse_dockerfile("FROM python:3.11 \\\n")
    with pytest.raises(D.DockerfileError, match="not a Dockerfile instruction"):
        D.parse_dockerfile("FROM python:3.11\n--bad\n")


def build_context(dockerfile: Path, dest: Path) -> Path:
    """What the image's COPY instructions put into it: the copied paths minus what .dockerignore excludes."""
    patterns = D.read_dockerignore()
    for ins in (i for i in D.read(dockerfile) if i.cmd == "COPY"):
        for src in [w for w in ins.words() if not w.startswith("--")][:-1]:
            rel = src.removeprefix("./").rstrip("/")
            source = D.ROOT / rel
            files = [source] if source.is_file() else [p for p in source.rglob("*") if p.is_file()]
            for path in files:
                relpath = path.relative_to(D.ROOT).as_posix()
                if not D.ignored(relpath, patterns):
                    (dest / relpath).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, dest / relpath)
    return dest


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_pip_install_from_the_image_context_ships_every_package_file(name, tmp_path):
    """`pip install .` in the image installs a wheel: every file of the packages (templates, YAML) must be in it."""
    context = build_context(D.ROOT / name, tmp_path / "context")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "out"),
         str(context)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "out").glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    packages = [p for p in D.project_sources() if (context / p).is_dir()]
    needed = {
        path.relative_to(context).as_posix()
        for package in packages
        for path in (context / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert needed, "no package files found in the build context"
    assert sorted(needed - shipped) == []
