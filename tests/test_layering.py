"""The package layering of geovl (issue 14), checked on the source with ``ast``.

bottom   errors and the leaf utilities (fileio, units, log); models, imagery, data
middle   inference, rewards, evaluate, geo, spectral, train, merge, synth, infer
top      serve (HTTP), ui (web app), commands, cli

Every ``import`` / ``from … import`` of every module counts, also those inside functions and relative
ones. The rules: no import cycle between packages; no library module imports commands, cli, serve
or ui; rewards imports only the leaf utilities (so other projects can use it with TRL).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
TOP = {"commands", "cli", "serve", "ui", "__main__"}  # only these may import commands/cli/serve/ui
LEAVES = {"errors", "fileio", "units", "log"}  # the leaf utilities at the top level of geovl
# What rewards still imports beyond the leaf utilities (module → imported module). The answer
# parsers it scores with live in evaluate/data today; the list may only shrink: any new import fails.
REWARDS_PENDING = {
    ("geovl.rewards.funcs", "geovl.data.schema"),
    ("geovl.rewards.route", "geovl.data.qtype"),
    ("geovl.rewards.rules", "geovl.evaluate.normalize"),
    ("geovl.rewards.rules", "geovl.evaluate.quantities"),
    ("geovl.rewards.rules", "geovl.evaluate.rules"),
    ("geovl.rewards.rules", "geovl.evaluate.grounding"),
}


def module_files(src: Path = SRC) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module under ``src/geovl``."""
    out = {}
    for f in sorted((src / "geovl").rglob("*.py")):
        parts = list(f.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports_of(module: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    """The geovl modules ``module`` imports anywhere in ``source`` (function bodies included;
    relative imports resolved; ``from pkg import name`` counts as ``pkg.name`` when that is a module)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known)
    return {t for t in found if t == "geovl" or t.startswith("geovl.")}


def package_of(module: str) -> str:
    """``geovl.serve.api`` → ``serve``; ``geovl.cli`` → ``cli``; ``geovl`` → ``geovl``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_graph(src: Path = SRC) -> dict[str, set[str]]:
    files = module_files(src)
    known = set(files)
    graph = {}
    for mod, f in files.items():
        targets = imports_of(mod, f.read_text(encoding="utf-8"), f.name == "__init__.py", known)
        # a name imported from a module (``from geovl import __version__``) belongs to that module
        graph[mod] = {t if t in known else t.rsplit(".", 1)[0] for t in targets} - {mod}
    return graph


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for mod, targets in graph.items():
        a = package_of(mod)
        out.setdefault(a, set())
        for t in targets:
            b = package_of(t)
            if b != a and b != "geovl":
                out[a].add(b)
    return out


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each as a cycle path
    ``[a, b, …, a]`` through the graph, sorted; empty when the graph is acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return sorted(_cycle_path(graph, comp) for comp in comps)


def _cycle_path(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest cycle through the smallest node of a strongly connected component: ``[a, …, a]``."""
    start = min(comp)
    prev: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph.get(v, ())):
            if w == start:  # back at the start: walk the predecessors from v
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return path[::-1] + [start]
            if w in comp and w not in prev:
                prev[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle through {start} in {sorted(comp)}")  # pragma: no cover


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``library module -> commands/cli/serve/ui module`` lines (library: every package not in TOP)."""
    return sorted(
        f"{m} -> {t}"
        for m, ts in graph.items()
        for t in ts
        if package_of(m) not in TOP and package_of(t) in TOP and t != "geovl"
    )


def rewards_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(rewards module, imported geovl module) pairs outside rewards and the leaf utilities."""
    return {
        (m, t)
        for m, ts in graph.items()
        if package_of(m) == "rewards"
        for t in ts
        if package_of(t) not in LEAVES | {"rewards", "geovl"}
    }


# -- the checker itself can fail -------------------------------------------------------------------
def test_find_cycles_names_the_cycle_of_a_fake_graph():
    fake = {"data": {"models"}, "models": {"errors"}, "geo": {"data", "serve"}, "serve": {"geo"}, "errors": set()}
    assert find_cycles(fake) == [["geo", "serve", "geo"]]
    fake["errors"] = {"geo"}  # a longer loop: data → models → errors → geo → data (and geo ↔ serve)
    assert find_cycles(fake) == [["data", "models", "errors", "geo", "data"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_imports_are_found_inside_functions_and_relative(tmp_path):
    pkg = tmp_path / "geovl"
    (pkg / "geo").mkdir(parents=True)
    (pkg / "serve").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "geo" / "__init__.py").write_text("")
    (pkg / "serve" / "__init__.py").write_text("")
    (pkg / "serve" / "api.py").write_text("from ..geo import ask\n")
    (pkg / "geo" / "ask.py").write_text("def f():\n    from ..serve.api import x\n    import geovl.serve\n")
    g = module_graph(tmp_path)
    assert g["geovl.geo.ask"] == {"geovl.serve.api", "geovl.serve"} and g["geovl.serve.api"] == {
        "geovl.geo",
        "geovl.geo.ask",
    }
    assert find_cycles(package_graph(g)) == [["geo", "serve", "geo"]]
    assert upward_imports(g) == ["geovl.geo.ask -> geovl.serve", "geovl.geo.ask -> geovl.serve.api"]
    (pkg / "rewards").mkdir()
    (pkg / "rewards" / "__init__.py").write_text("from ..errors import GeoVLError\nfrom ..geo.ask import f\n")
    (pkg / "errors.py").write_text("")
    assert rewards_imports(module_graph(tmp_path)) == {("geovl.rewards", "geovl.geo.ask")}


# -- the real tree ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph():
    g = module_graph()
    assert len(g) > 100 and "geovl.inference.engine" in g and "geovl.cli" in g  # the walk saw the tree
    return g


def test_no_cycle_between_packages(graph):
    pg = package_graph(graph)
    cycles = find_cycles(pg)
    mutual = sorted(f"{a} ↔ {b}" for a in pg for b in pg[a] if a < b and a in pg.get(b, ()))
    assert not cycles, (
        "package import cycles: " + "; ".join(" → ".join(c) for c in cycles) + " (mutual: " + ", ".join(mutual) + ")"
    )


def test_library_never_imports_commands_cli_serve_or_ui(graph):
    bad = upward_imports(graph)
    assert not bad, "library modules import the top layer:\n" + "\n".join(bad)


def test_rewards_imports_only_leaf_utilities(graph):
    extra = rewards_imports(graph) - REWARDS_PENDING
    assert not extra, "rewards imports beyond the leaf utilities (errors/fileio/units/log):\n" + "\n".join(
        f"{m} -> {t}" for m, t in sorted(extra)
    )
    assert not REWARDS_PENDING - rewards_imports(graph), "an import left rewards: remove it from REWARDS_PENDING"


def test_run_handlers_live_in_commands(graph):
    """``run(args)`` taking an argparse Namespace: only in geovl.commands (train's two: recipes-launch)."""
    found = []
    for mod, f in module_files().items():
        if package_of(mod) == "commands":
            continue
        for node in ast.parse(f.read_text(encoding="utf-8")).body:
            if (
                isinstance(node, ast.FunctionDef)
                and node.name.startswith("run")
                and [a.arg for a in node.args.args] == ["args"]
            ):
                found.append(f"{mod}.{node.name}")
    assert set(found) <= {"geovl.train.sft.run", "geovl.train.grpo.run"}, found
