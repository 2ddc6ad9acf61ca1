"""The layout holds: the service never loads tooling, imports run forward, modules stay small.

`broker/` is the running service and its kernel, `broker/tools/` every other command,
`workers/` what runs on Dask and what a model is, `services/fritz/nightjar_fritz` the
Fritz-like service on its own. These tests read the code (ast) and start a fresh
interpreter, so they fail on the first stray import, wherever it hides.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "broker": REPO / "broker",
    "workers": REPO / "workers",
    "nightjar_fritz": REPO / "services" / "fritz" / "nightjar_fritz",
}
# What the service must never have loaded: the tools, the Fritz-like service, and the
# libraries only tools need (install extras the broker and worker images leave out).
FORBIDDEN_IN_SERVICE = (
    "broker.tools",
    "nightjar_fritz",
    "matplotlib",
    "astropy",
    "tensorflow",
    "tf2onnx",
    "tqdm",
)
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> Iterator[tuple[str, Path]]:
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join((package, *parts)), path


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Project modules `path` imports (module level only, or anywhere, lazy ones included)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if top_level_only and isinstance(node, ast.If):
            continue  # `if TYPE_CHECKING:` imports do not run
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _resolve(name: str, known: set[str]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    modules = dict(_modules())
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {_resolve(target, known) for target in _imports(path, top_level_only)}
        graph[name] = {t for t in targets if t and t != name and not name.startswith(t + ".")}
    return graph


def test_the_run_and_post_commands_load_no_tooling() -> None:
    script = (
        "import json, sys\n"
        "from broker.__main__ import build_parser\n"
        "import broker.cli.run, broker.cli.post\n"
        "build_parser(['run']).parse_args(['run'])\n"
        "build_parser(['post']).parse_args(['post'])\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    stray = [m for m in loaded if m.startswith(FORBIDDEN_IN_SERVICE)]
    assert stray == [], f"`nightjar run`/`post` loaded tooling: {stray}"
    assert "broker.pipeline" in loaded and "broker.post.sender" in loaded


def test_service_modules_never_import_tools_even_lazily() -> None:
    graph = _graph(top_level_only=False)
    service = [m for m in graph if m.startswith(("broker", "workers"))]
    service = [m for m in service if not m.startswith(("broker.tools", "broker.cli"))]
    offenders = {
        module: sorted(t for t in graph[module] if t.startswith(("broker.tools", "nightjar_fritz")))
        for module in service
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_cli_modules_import_their_tool_inside_run() -> None:
    graph = _graph(top_level_only=True)
    offenders = {
        module: sorted(t for t in targets if t.startswith(("broker.tools", "nightjar_fritz")))
        for module, targets in graph.items()
        if module.startswith("broker.cli")
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_workers_never_reach_into_tools() -> None:
    graph = _graph(top_level_only=False)
    offenders = {
        module: sorted(t for t in targets if t.startswith(("broker.tools", "broker.cli")))
        for module, targets in graph.items()
        if module.startswith("workers")
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_the_fritz_like_service_stands_alone() -> None:
    """It validates what the poster sends from SkyPortal's contract, never the poster's code."""
    graph = _graph(top_level_only=False)
    offenders = {
        module: sorted(t for t in targets if not t.startswith("nightjar_fritz"))
        for module, targets in graph.items()
        if module.startswith("nightjar_fritz")
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_no_import_circle() -> None:
    graph = _graph(top_level_only=True)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (circle := visit(target)):
                return circle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            pytest.fail(f"import circle: {' -> '.join(circle)}")


def test_broker_lists_only_the_service_cli_and_tools() -> None:
    entries = [p.name for p in (REPO / "broker").iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 25, sorted(entries)


def test_modules_and_functions_stay_small() -> None:
    too_long: list[str] = []
    for name, path in _modules():
        lines = path.read_text().count("\n")
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert too_long == []


def test_help_lists_tools_whose_libraries_are_not_installed() -> None:
    """The service images leave out the [tools] extra: `nightjar --help` still works there."""
    script = (
        "import sys\n"
        "sys.modules['tqdm'] = None  # as if not installed\n"
        "from broker.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    listed = subprocess.run(
        [sys.executable, "-c", script, "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    assert "bench" in listed.stdout and "not installed here" in listed.stdout
    refused = subprocess.run(
        [sys.executable, "-c", script, "bench"], cwd=REPO, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "nightjar[tools" in refused.stderr
