"""A small Dockerfile reader and the checks the component images must pass (Docker itself cannot run here).

`parse_dockerfile(text)` turns a Dockerfile into instructions (line continuations, comments, JSON and
shell forms, ARG defaults substituted); each `check_*` returns a list of problems, empty when it passes.
"""

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tests.k8s.policies import image_problem

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Instruction:
    line: int  # first line of the instruction (1-based)
    cmd: str  # upper-case keyword: FROM, RUN, COPY, ...
    value: str  # the rest, continuations joined

    def words(self) -> list[str]:
        """Arguments: the JSON array of the exec form, else shell-like words."""
        if self.value.startswith("["):
            try:
                return [str(w) for w in json.loads(self.value)]
            except json.JSONDecodeError:
                pass
        return shlex.split(self.value, comments=False, posix=True)


class DockerfileError(ValueError):
    """The Dockerfile cannot be read; the message gives the line."""


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile, with `${VAR}` / `$VAR` replaced by the defaults of earlier ARG/ENV lines."""
    instructions: list[Instruction] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by Docker too
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1].rstrip() + " "
            continue
        buffer += stripped
        keyword, _, rest = buffer.partition(" ")
        if not re.fullmatch(r"[A-Za-z]+", keyword):
            raise DockerfileError(f"line {start}: {keyword!r} is not a Dockerfile instruction")
        instructions.append(Instruction(start, keyword.upper(), rest.strip()))
        buffer = ""
    if buffer:
        raise DockerfileError(f"line {start}: the file ends inside a continued instruction")
    return _substitute(instructions)


def _substitute(instructions: list[Instruction]) -> list[Instruction]:
    variables: dict[str, str] = {}
    out = []
    for ins in instructions:
        value = re.sub(
            r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)",
            lambda m: variables.get(m.group(1) or m.group(3), m.group(2) or m.group(0)),
            ins.value,
        )
        if ins.cmd == "ARG" and "=" in value:
            name, _, default = value.partition("=")
            variables[name.strip()] = default.strip().strip('"')
        out.append(Instruction(ins.line, ins.cmd, value))
    return out


def read(path: str | Path) -> list[Instruction]:
    return parse_dockerfile(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------- checks
def check_base_pinned(instructions: list[Instruction]) -> list[str]:
    """There is a FROM, and every base image has a fixed tag (not latest) or a digest; no unresolved variables."""
    froms = [i for i in instructions if i.cmd == "FROM"]
    if not froms:
        return ["no FROM instruction"]
    problems = []
    stages = set()
    for ins in froms:
        words = [w for w in ins.words() if not w.startswith("--platform")]
        image = words[0] if words else ""
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])
        if image in stages or image == "scratch":
            continue
        if "$" in image:
            problems.append(f"line {ins.line}: base image {image!r} depends on an unset variable")
            continue
        problem = image_problem(image)
        if problem:
            problems.append(f"line {ins.line}: {problem}")
    return problems


def check_non_root(instructions: list[Instruction]) -> list[str]:
    """The final stage ends as a non-root USER (not root, not UID 0)."""
    last_from = max((n for n, i in enumerate(instructions) if i.cmd == "FROM"), default=-1)
    users = [i for i in instructions[last_from + 1 :] if i.cmd == "USER"]
    if not users:
        return ["no USER instruction in the final stage: the container runs as root"]
    user = users[-1].value.split(":")[0].strip()
    if user in ("root", "0", ""):
        return [f"line {users[-1].line}: USER {users[-1].value} is root"]
    return []


def _pip_installs(instructions: list[Instruction]) -> list[tuple[Instruction, list[str]]]:
    """(instruction, words after `pip install`) for every pip install in a RUN."""
    found = []
    for ins in (i for i in instructions if i.cmd == "RUN"):
        for command in re.split(r"&&|;|\|\|", ins.value):
            words = command.split()
            for k in range(len(words) - 1):
                if words[k].endswith("pip") or words[k] == "pip3":
                    if words[k + 1] == "install":
                        found.append((ins, words[k + 2 :]))
                elif words[k] == "-m" and words[k + 1] == "pip" and k + 2 < len(words) and words[k + 2] == "install":
                    found.append((ins, words[k + 3 :]))
    return found


def check_project_installed(instructions: list[Instruction]) -> list[str]:
    """The project itself is pip-installed (`pip install .`), without the dev extra or an editable install."""
    installs = _pip_installs(instructions)
    problems = []
    if not any(w == "." for _, words in installs for w in words):
        problems.append("the project is never installed with `pip install .`")
    for ins, words in installs:
        for w in words:
            if re.fullmatch(r"\.?\[.*\bdev\b.*\]", w.strip("'\"")):
                problems.append(f"line {ins.line}: installs the dev extra ({w})")
            if w in ("-e", "--editable"):
                problems.append(f"line {ins.line}: editable install in an image")
    return problems


def torch_pin(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The torch requirement of the project (e.g. 'torch==2.13.0')."""
    deps = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    return next(d.replace(" ", "") for d in deps if re.match(r"torch\b", d))


def check_torch(instructions: list[Instruction], cpu: bool, pin: str | None = None) -> list[str]:
    """torch is installed at the project's pin before the project; the CPU image takes it from the CPU index."""
    pin = pin or torch_pin()
    installs = _pip_installs(instructions)
    torch_installs = [(ins, words) for ins, words in installs if pin in words and "." not in words]
    if not torch_installs:
        return [f"torch is never installed on its own at the project's pin {pin}"]
    problems = []
    first, words = torch_installs[0]
    project = next((ins for ins, w in installs if "." in w), None)
    if project is not None and project.line < first.line:
        problems.append(f"line {first.line}: torch is installed after the project (pip would pick the default build)")
    index = next((words[k + 1] for k, w in enumerate(words[:-1]) if w in ("--index-url", "-i")), None)
    index = index or next((w.split("=", 1)[1] for w in words if w.startswith("--index-url=")), None)
    if cpu and (index is None or not index.rstrip("/").endswith("/whl/cpu")):
        problems.append(f"line {first.line}: the CPU image must take torch from the PyTorch CPU index (got {index})")
    if not cpu and index is not None and index.rstrip("/").endswith("/whl/cpu"):
        problems.append(f"line {first.line}: the CUDA image installs the CPU build of torch")
    return problems


def read_dockerignore(path: Path = ROOT / ".dockerignore") -> list[str]:
    if not path.exists():
        return []
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]


def ignored(relpath: str, patterns: list[str]) -> bool:
    """Whether .dockerignore excludes a path (last matching pattern wins; `!` re-includes; `**` any depth)."""
    result = False
    parts = Path(relpath).parts
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        alternatives = {pat, pat[3:]} if pat.startswith("**/") else {pat}
        if any(fnmatch.fnmatchcase(p, a) for p in prefixes for a in alternatives) or any(
            pat.startswith("**/") and fnmatch.fnmatchcase(part, pat[3:]) for part in parts
        ):
            result = not negate
    return result


def project_sources(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """What `pip install .` needs: pyproject.toml, the readme, and every top-level package it finds."""
    meta = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    needed = ["pyproject.toml"]
    readme = meta["project"].get("readme")
    if isinstance(readme, str):
        needed.append(readme)
    patterns = meta.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {}).get("include", [])
    root = pyproject.parent
    for child in sorted(root.iterdir()):
        is_package = child.is_dir() and (child / "__init__.py").exists()
        if is_package and any(fnmatch.fnmatch(child.name, p) for p in patterns):
            needed.append(child.name)
    return needed


def check_copies(instructions: list[Instruction], root: Path = ROOT, patterns: list[str] | None = None) -> list[str]:
    """Every COPY/ADD source exists and is not excluded by .dockerignore; all project sources are copied."""
    patterns = read_dockerignore(root / ".dockerignore") if patterns is None else patterns
    problems, copied = [], set()
    for ins in (i for i in instructions if i.cmd in ("COPY", "ADD")):
        words = ins.words()
        if any(w.startswith("--from") for w in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        if not sources:
            problems.append(f"line {ins.line}: {ins.cmd} without a source")
        for src in sources:
            rel = src.removeprefix("./").rstrip("/") or "."
            if ins.cmd == "ADD" and re.match(r"https?://", src):
                problems.append(f"line {ins.line}: ADD of a URL (not reproducible)")
                continue
            if not (root / rel).exists():
                problems.append(f"line {ins.line}: {ins.cmd} source {src!r} does not exist")
            elif rel != "." and ignored(rel, patterns):
                problems.append(f"line {ins.line}: {ins.cmd} source {src!r} is excluded by .dockerignore")
            copied.add(rel.split("/")[0])
    if "." not in copied:
        for needed in project_sources(root / "pyproject.toml"):
            if needed not in copied:
                problems.append(f"{needed} is not copied into the image (pip install . needs it)")
    return problems


def check_exec_form(instructions: list[Instruction]) -> list[str]:
    """CMD and ENTRYPOINT use the exec (JSON) form, so signals reach the process."""
    return [
        f"line {i.line}: {i.cmd} uses the shell form"
        for i in instructions
        if i.cmd in ("CMD", "ENTRYPOINT") and not i.value.startswith("[")
    ]
