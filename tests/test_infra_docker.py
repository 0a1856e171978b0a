"""The worker image and the local Azure stack, checked by reading the files (no Docker engine here)."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from devstack.infra import EMULATOR_CONFIG

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "worker" / "Dockerfile"
EMULATOR_CONNECTION = (
    "Endpoint=sb://{host};SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"
    "UseDevelopmentEmulator=true;"
)


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_base_image_is_python_311_slim() -> None:
    froms = [args for keyword, args in _instructions() if keyword == "FROM"]
    assert froms == ["python:3.11-slim"]


def test_dockerfile_installs_only_the_worker_requirements() -> None:
    runs = [args for keyword, args in _instructions() if keyword == "RUN"]
    installs = [run for run in runs if "pip install" in run]
    assert installs == ["pip install --no-cache-dir -r /app/worker/requirements.txt"]


def test_dockerfile_copies_only_the_worker_its_queue_and_the_contract() -> None:
    copies = [args for keyword, args in _instructions() if keyword in ("COPY", "ADD")]
    assert all(keyword != "ADD" for keyword, _ in _instructions())
    sources = {args.split()[0] for args in copies}
    assert sources == {"worker/requirements.txt", "shared/", "localqueue/", "worker/"}


def test_dockerfile_runs_as_non_root_the_worker_command() -> None:
    instructions = _instructions()
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, "no USER instruction: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    last_user = max(i for i, (k, _) in enumerate(instructions) if k == "USER")
    assert all(k != "RUN" for k, _ in instructions[last_user:]), "nothing runs as root after USER"
    cmd = [args for keyword, args in instructions if keyword == "CMD"][-1]
    assert json.loads(cmd) == ["python", "-m", "worker", "run"]
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert "RELAYBUS_HTTP_HOST=0.0.0.0" in env
    assert "RELAYBUS_HTTP_PORT=8080" in env


def test_dockerignore_sends_only_the_worker_its_queue_and_the_contract() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert {line for line in lines if line.startswith("!")} == {"!worker/", "!localqueue/", "!shared/"}


def _distribution_names() -> set[str]:
    names = set()
    for line in (ROOT / "worker" / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[=<>!~\[; ]", line)[0].lower().replace("_", "-"))
    return names


def _installed_closure(names: set[str]) -> set[str]:
    """The requirement names plus everything they depend on (as installed here)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            if "extra ==" in requirement:
                continue
            todo.append(re.split(r"[=<>!~\[; (]", requirement)[0].lower().replace("_", "-"))
    return seen


def _imports(path: Path) -> set[str]:
    """Every absolute import in a module, lazy ones in function bodies too (not `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _module_path(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_the_worker_entry_point_imports_only_what_the_image_holds() -> None:
    """Follow every import of `python -m worker` from worker/__main__.py: nothing outside the image."""
    start = ["worker.__main__"]
    allowed = _installed_closure(_distribution_names())
    packages = importlib.metadata.packages_distributions()
    seen: set[str] = set()
    third_party: dict[str, str] = {}
    todo = [m for m in start if _module_path(m) is not None]
    assert todo, "worker/__main__.py is missing"
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_path(module)
        if path is None:
            continue
        for imported in _imports(path):
            top = imported.split(".")[0]
            if top in ("worker", "shared", "localqueue"):
                todo.append(imported)
                parts = imported.split(".")
                todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
            elif top in ("handlers", "function_app", "functions", "devstack", "tests", "bench"):
                third_party[imported] = "not copied into the image"
            elif top not in sys.stdlib_module_names:
                dists = {d.lower().replace("_", "-") for d in packages.get(top, [top])}
                if not dists & allowed:
                    third_party[imported] = f"from {sorted(dists)}, not in worker/requirements.txt"
    assert third_party == {}


def _compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


def test_compose_runs_the_emulator_with_the_generated_config_and_azurite() -> None:
    services = _compose()["services"]
    emulator = services["servicebus"]
    assert emulator["image"].startswith("mcr.microsoft.com/azure-messaging/servicebus-emulator")
    mounts = [v.split(":") for v in emulator["volumes"]]
    assert [f"./{EMULATOR_CONFIG}", "/ServiceBus_Emulator/ConfigFiles/Config.json", "ro"] in mounts
    assert (ROOT / EMULATOR_CONFIG).is_file()
    assert "5672:5672" in emulator["ports"]
    sql = emulator["environment"]["SQL_SERVER"]
    # the SQL Server the emulator documents today (Azure SQL Edge was retired on 2025-09-30)
    assert services[sql]["image"].startswith("mcr.microsoft.com/mssql/server:2022-")
    assert sql in emulator["depends_on"]
    assert emulator["environment"]["MSSQL_SA_PASSWORD"] == services[sql]["environment"]["MSSQL_SA_PASSWORD"]
    assert services["azurite"]["image"].startswith("mcr.microsoft.com/azure-storage/azurite")
    assert "--disableTelemetry" in services["azurite"]["command"]
    assert {"10000:10000", "10001:10001", "10002:10002"} <= set(services["azurite"]["ports"])


def test_compose_pins_every_image_to_a_version_tag() -> None:
    """No `latest`, no missing tag: `docker compose up` next year runs what was checked (docs/deploy.md)."""
    images = {name: service["image"] for name, service in _compose()["services"].items() if "image" in service}
    assert set(images) == {"azurite", "sqlserver", "servicebus"}
    for name, image in images.items():
        repository, _, tag = image.rpartition(":")
        assert "/" in repository and "@" not in image, f"{name}: {image}"
        assert tag and "/" not in tag, f"{name}: {image} has no tag"
        assert "latest" not in tag.lower(), f"{name}: {image} is not pinned"
        assert re.search(r"\d+\.\d+|\d{4}-CU\d+", tag), f"{name}: {image} does not name a version"


def test_compose_worker_is_optional_and_uses_the_emulator() -> None:
    services = _compose()["services"]
    worker = services["worker"]
    assert worker["profiles"] == ["worker"]
    assert worker["build"] == {"context": ".", "dockerfile": "worker/Dockerfile"}
    assert worker["environment"]["RELAYBUS_QUEUE_BACKEND"] == "servicebus"
    assert worker["environment"]["ServiceBusConnection"] == EMULATOR_CONNECTION.format(host="servicebus")
    assert all("profiles" not in services[name] for name in ("servicebus", "sqlserver", "azurite"))
