"""The folder list is the list of deployables, and each deployable carries exactly what it needs.

- The layering: which top-level package may import which (walked over every import of every module,
  lazy and type-only ones included).
- The file lists: what the worker image copies (worker/Dockerfile, .dockerignore) and what the function
  app ships (.funcignore), computed from the tracked files.
- Each deployable's files, copied alone into a temporary folder, with only its own requirements installed in
  a fresh virtual environment: every module imports, and the entry points start.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# top-level package -> the first-party packages it may import
LAYERS: dict[str, set[str]] = {
    "shared": {"shared"},
    "localqueue": {"localqueue", "shared"},
    "worker": {"worker", "localqueue", "shared"},
    "functions": {"functions", "shared"},
    "handlers": {"handlers", "functions"},
    "function_app": {"functions", "handlers"},
    "devstack": {"devstack", "worker", "localqueue", "functions", "handlers", "function_app", "shared"},
}
FIRST_PARTY = set(LAYERS) | {"tests", "bench"}


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if (ROOT / line).is_file()]


def python_files(package: str) -> list[Path]:
    if package == "function_app":
        return [ROOT / "function_app.py"]
    return sorted((ROOT / package).rglob("*.py"))


def imports_of(path: Path) -> set[str]:
    """Top-level names of every absolute import in a module (function bodies and TYPE_CHECKING included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_import_runs_against_the_layering(package: str) -> None:
    allowed = LAYERS[package]
    wrong = {}
    for path in python_files(package):
        bad = (imports_of(path) & FIRST_PARTY) - allowed
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert wrong == {}, f"{package} may import only {sorted(allowed)}"


def test_nothing_but_the_dev_stack_tests_and_benchmarks_imports_the_dev_stack() -> None:
    for package in LAYERS:
        if package == "devstack":
            continue
        for path in python_files(package):
            assert "devstack" not in imports_of(path), path


def test_every_python_file_belongs_to_a_deployable_or_to_tests_and_benchmarks() -> None:
    tops = {Path(f).parts[0] for f in tracked_files() if f.endswith(".py")}
    assert tops <= {*LAYERS, "function_app.py", "tests", "bench"}, tops - {*LAYERS, "tests", "bench"}


# --- what each deployable ships ----------------------------------------------------------------------------


def _ignored(path: str, patterns: list[str]) -> bool:
    """gitignore-style matching, as far as .funcignore and .dockerignore use it."""
    parts = path.split("/")
    for raw in patterns:
        pattern = raw.rstrip("/")
        if "/" in pattern:
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                return True
        elif any(fnmatch.fnmatch(part, pattern) for part in parts):
            return True
    return False


def _patterns(file: str) -> list[str]:
    lines = (ROOT / file).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def worker_image_files() -> list[str]:
    """What `docker build -f worker/Dockerfile .` copies: the COPY sources, minus .dockerignore."""
    sources = []
    for line in (ROOT / "worker" / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources.append(line.split()[1])
    patterns = _patterns(".dockerignore")
    allowed = [p.removeprefix("!") for p in patterns if p.startswith("!")]
    excluded = [p for p in patterns if not p.startswith("!") and p != "*"]
    files = []
    for f in tracked_files():
        if not any(f == s or f.startswith(s) for s in sources):
            continue
        if not any(f.startswith(a) for a in allowed) or _ignored(f, [p.removeprefix("**/") for p in excluded]):
            continue
        files.append(f)
    return files


def function_app_files() -> list[str]:
    """What `func azure functionapp publish` uploads: the project folder minus .funcignore."""
    patterns = _patterns(".funcignore")
    return [f for f in tracked_files() if not _ignored(f, patterns)]


def test_the_worker_image_holds_the_worker_its_queue_and_the_contract_only() -> None:
    tops = {Path(f).parts[0] for f in worker_image_files()}
    assert tops == {"worker", "localqueue", "shared"}
    assert "worker/requirements.txt" in worker_image_files()


def test_the_function_app_ships_its_own_files_only() -> None:
    files = function_app_files()
    tops = {Path(f).parts[0] for f in files}
    assert tops == {"function_app.py", "host.json", "requirements.txt", "functions", "handlers", "shared"}, tops


# --- each deployable alone, in a fresh virtual environment ---------------------------------------------------


def _venv(name: str, requirements: Path) -> Path:
    """A virtual environment with only `requirements` installed, cached by their content."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    home = ROOT / ".relaybus" / "venvs" / f"{name}-{digest}"
    python = home / "bin" / "python"
    if (home / ".complete").is_file():
        return python
    shutil.rmtree(home, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(home)], check=True, capture_output=True)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(requirements)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    (home / ".complete").write_text(digest)
    return python


def _copy(files: list[str], into: Path) -> None:
    for f in files:
        target = into / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, target)


def _clean_env(folder: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "Service"))}
    env.pop("PYTHONPATH", None)
    env.update(PYTHONPATH=str(folder), PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


_IMPORT_ALL = """
import importlib, pkgutil, sys
names = []
for top in sys.argv[1:]:
    module = importlib.import_module(top)
    names.append(top)
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), top + "."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
        names.append(info.name)
print(len(names), "modules")
"""


@pytest.mark.timeout(900)
def test_the_worker_image_runs_with_only_its_own_files_and_requirements(tmp_path: Path) -> None:
    python = _venv("worker", ROOT / "worker" / "requirements.txt")
    _copy(worker_image_files(), tmp_path)
    env = _clean_env(tmp_path)
    imported = subprocess.run(
        [str(python), "-c", _IMPORT_ALL, "shared", "localqueue", "worker"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imported.returncode == 0, imported.stderr
    helped = subprocess.run(
        [str(python), "-m", "worker", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0 and "run" in helped.stdout, helped.stderr
    settings = subprocess.run(
        [str(python), "-m", "worker", "settings"],
        cwd=tmp_path,
        env={**env, "SLACK_APP_TOKEN": "xapp-1-image-check"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert settings.returncode == 0 and "image-check" not in settings.stdout, settings.stderr
    queue = subprocess.run(
        [str(python), "-m", "worker", "queue", "stats", "--path", str(tmp_path / "none.db")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert queue.returncode == 1 and "no local queue" in queue.stderr, queue.stderr
    moved = subprocess.run(
        [str(python), "-m", "worker", "dev", "--once"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert moved.returncode == 2 and "dev stack" in moved.stderr and "Traceback" not in moved.stderr


@pytest.mark.timeout(900)
def test_the_function_app_runs_with_only_its_own_files_and_requirements(tmp_path: Path) -> None:
    python = _venv("functions", ROOT / "requirements.txt")
    _copy(function_app_files(), tmp_path)
    env = _clean_env(tmp_path, SLACK_BOT_TOKEN="xoxb-layout-check")
    imported = subprocess.run(
        [str(python), "-c", _IMPORT_ALL, "shared", "functions", "handlers", "function_app"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imported.returncode == 0, imported.stderr
    indexed = subprocess.run(
        [
            str(python),
            "-c",
            "import function_app; print(sorted(f.get_function_name() for f in function_app.app.get_functions()))",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert indexed.returncode == 0, indexed.stderr
    assert "slack_events" in indexed.stdout and "teams_invokes" in indexed.stdout


def test_no_two_classes_share_a_name_across_the_deployables() -> None:
    """One of each: a name means one thing (`Outcome`, `Invocation`, `ServiceBusOptions` once meant two)."""
    seen: dict[str, list[str]] = {}
    for package in LAYERS:
        for path in python_files(package):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                    seen.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    clashes = {name: places for name, places in seen.items() if len(places) > 1}
    assert clashes == {}


@pytest.mark.parametrize("cli", ["worker/cli.py", "devstack/cli.py", "localqueue/cli.py", "functions/__main__.py"])
def test_command_lines_have_no_import_error_placeholders(cli: str) -> None:
    tree = ast.parse((ROOT / cli).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and node.type is not None:
            names = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}
            assert not names & {"ImportError", "ModuleNotFoundError"}, f"{cli}:{node.lineno}"
