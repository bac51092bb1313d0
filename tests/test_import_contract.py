"""The house plan, checked (docs/architecture.md, "Layers"): the import contract that
import-linter enforces, no import cycles, imports at module top, short modules, the
daemon without the simulator, a device host without the brain's heavy libraries, and
documents cited by the code that exist in the repository."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

import grimp
import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("observatory", "brain", "drivers", "simulator", "policies")
# Imported inside functions on purpose: heavy, and needed by few commands (the daemon
# with --hosting local never loads Ray or vLLM; brain classify never loads torch).
LAZY_OK = {"ray", "torch", "transformers", "vllm", "safetensors", "matplotlib", "astropy",
           "fastapi", "lightgbm", "sklearn", "psycopg", "redback", "numba"}
MAX_LINES = 600


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def test_import_linter_contracts_are_kept():
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(exe), "--config", str(REPO / "pyproject.toml")], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "5 kept, 0 broken" in r.stdout


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    g = grimp.build_graph(*PACKAGES)
    graph = {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}
    assert _cycles(graph) == []
    # the check itself finds a cycle when there is one
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_at_module_top():
    """First-party and light imports sit at the top of the module; only a heavy optional
    library may be imported inside a function, and the line says so."""
    bad = []
    for path in _modules():
        src = path.read_text()
        lines = src.splitlines()
        for fn in ast.walk(ast.parse(src)):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    tops = {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom):
                    tops = {(node.module or "").split(".")[0]} if not node.level else {"."}
                else:
                    continue
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                if not tops <= LAZY_OK:
                    bad.append(f"{where} imports {sorted(tops)} inside a function")
                elif not any("# lazy" in line
                             for line in lines[node.lineno - 1:node.end_lineno]):
                    bad.append(f"{where}: a lazy import without a comment saying so")
    assert bad == []


def test_no_module_over_600_lines():
    long = {str(p.relative_to(REPO)): n for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_daemon_loads_no_simulator_module(tmp_path):
    """`brain run --hosting local` as an operator starts it: python -X importtime lists
    every module the process imported, and none is the simulator's."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "brain", "run", "--hosting", "local",
         "--start", "2026-12-15T14:00:00", "--speed", "60", "--until", "2026-12-15T14:01:00",
         "--journal", str(tmp_path / "journal.sqlite"), "--metrics-port", "0",
         "--router", "tcp://127.0.0.1:25550", "--pub", "tcp://127.0.0.1:25551"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    imported = [line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:") and "|" in line]
    assert "brain.shells.daemon" in imported and "brain.core.braincore" in imported
    assert [m for m in imported if m.split(".")[0] == "simulator"] == []


def _dist_closure(requirements: list[str]) -> set[str]:
    """Installed distributions needed by ``requirements`` (their own dependencies too,
    markers and extras honoured)."""
    seen, todo = set(), [(Requirement(r), ()) for r in requirements]
    while todo:
        req, extras = todo.pop()
        name = req.name.lower().replace("_", "-")
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (*extras, "")):
            continue
        key = (name, tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(name)
        for dep in dist.requires or []:
            todo.append((Requirement(dep), tuple(req.extras)))
    return {n for n, _ in seen}


def _drivers_host(tmp_path: Path) -> Path:
    """A Python that sees only what `pip install '.[drivers]'` installs: a venv whose
    site-packages links exactly the distributions the base and the `drivers` extra
    require (taken from pyproject.toml, with their dependencies), and this repository."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _dist_closure(project["dependencies"]
                           + project["optional-dependencies"]["drivers"])
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    for name in wanted:
        dist = metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or []
                if not str(f).startswith("..")}
        for top in tops:
            src = Path(dist.locate_file(top))
            if src.exists() and not (site / top).exists():
                (site / top).symlink_to(src)
    (site / "sitian.pth").write_text(str(REPO) + "\n")
    return venv / "bin" / "python"


def test_drivers_extra_runs_a_device_host_without_the_brains_libraries(tmp_path):
    python = _drivers_host(tmp_path)
    heavy = ("torch", "ray", "vllm", "lightgbm", "matplotlib", "prometheus_client")
    r = subprocess.run([str(python), "-c", "import " + ", ".join(heavy[:1])],
                       capture_output=True, text=True)
    assert r.returncode != 0  # the emulated host really lacks them
    code = ("import sys, drivers.indi, drivers.device, drivers.simdevices, brain.cli.simdrivers;"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(heavy)!r}))")
    r = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"
    for cmd in (["-m", "brain", "sim-drivers", "--help"], ["-m", "drivers.indi", "--help"]):
        r = subprocess.run([str(python), *cmd], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and "usage" in r.stdout, r.stderr[-2000:]


CITED = re.compile(r"(?<![\w./])((?:docs|deploy|brain|drivers|simulator|policies|observatory"
                   r"|tests)/[\w./-]+\.(?:md|py|yaml|yml|json|avsc))")


@pytest.mark.parametrize("root", ["brain", "drivers", "simulator", "policies", "observatory",
                                  "tests", "deploy", "docs", "README.md", "Makefile"])
def test_code_cites_only_documents_in_the_repository(root):
    paths = [REPO / root] if (REPO / root).is_file() else \
        [p for p in (REPO / root).rglob("*") if p.is_file() and p.suffix in
         {".py", ".md", ".yaml", ".yml", ".env", ".service", ".json", ".toml"}
         and p != Path(__file__).resolve()]  # this file spells the patterns out
    outside, missing = [], []
    for p in paths:
        text = p.read_text(errors="replace")
        for m in re.finditer(r"(\.\./)?shared/|\b(CONTRACTS|PROTOCOL|ARCHITECTURE|STYLE)\.md",
                             text):
            outside.append(f"{p.relative_to(REPO)}: {m.group(0)}")
        for m in CITED.finditer(text):
            target = m.group(1).rstrip(".")
            if not (REPO / target).exists() and "*" not in target:
                missing.append(f"{p.relative_to(REPO)} cites {target}")
    assert outside == []
    assert missing == []


def test_command_line_reaches_every_command_module():
    """Every `brain` command's module imports and names its handler (the dispatch is by
    name, so a moved handler would only fail when that command is run)."""
    from brain import cli

    for command, (module, name) in cli.COMMANDS.items():
        r = subprocess.run([sys.executable, "-c",
                            f"import brain.cli.{module} as m; assert callable(m.{name})"],
                           cwd=REPO, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        assert r.returncode == 0, f"{command}: {r.stderr[-1000:]}"
