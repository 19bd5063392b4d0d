"""Every third-party module that src/geovl imports is declared in pyproject.toml — in the core
dependencies, or in the extra of the part that uses it — so `pip install geovl[...]` in a fresh venv
gives no ImportError. The walk covers lazy imports (inside functions) too; each floor in pyproject is
satisfied by the verified pin in requirements.txt."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "geovl"

# import name -> distribution name, where they differ
DIST_OF = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "multipart": "python-multipart",
}

# Imported but deliberately not declared: each is reached only by an opt-in feature, and either the import
# is guarded (a clear error naming the package when it is missing) or the feature cannot be switched on
# without it. The test still fails for any other undeclared import.
UNDECLARED_OPTIONAL = {
    "fiona": "non-GeoJSON AOI files (geo/aoi.py); guarded: the error says to convert with ogr2ogr",
    "modelscope": "geovl model download --hub modelscope; guarded: the error says pip install modelscope",
    "deepspeed": "recipes with a DeepSpeed config; accelerate refuses such a config before geovl's import runs",
}

# Where a part lives -> the extras its imports may come from (besides the core list). Paths are relative to
# src/geovl; both the current and the target layout (issue 14: inference/, ui/) are listed.
PART_EXTRAS = [
    ("ui/", {"ui", "serve"}),
    ("serve/webapp.py", {"ui", "serve"}),
    ("serve/geo_panel.py", {"ui", "serve"}),
    ("serve/geo_view.py", {"ui", "serve"}),
    ("serve/i18n.py", {"ui", "serve"}),
    ("serve/engine.py", {"serve", "qlora"}),
    ("serve/", {"serve"}),
    ("inference/engine.py", {"qlora"}),
    ("inference/remote.py", {"serve"}),
    ("imagery/stac.py", {"stac"}),
    ("train/model_setup.py", {"train", "qlora"}),
    ("train/", {"train"}),
]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _extras() -> dict[str, set[str]]:
    """extra -> canonical dist names, with self-references (geovl[serve]) expanded."""
    raw = {k: [Requirement(r) for r in v] for k, v in _pyproject()["project"]["optional-dependencies"].items()}

    def expand(name: str, seen=()) -> set[str]:
        out = set()
        for r in raw[name]:
            if canonicalize_name(r.name) == "geovl":
                for e in r.extras:
                    assert e in raw, f"extra {name} refers to unknown extra geovl[{e}]"
                    assert e not in seen, f"extras refer to each other in a loop: {seen + (e,)}"
                    out |= expand(e, seen + (name,))
            else:
                out.add(canonicalize_name(r.name))
        return out

    return {k: expand(k) for k in raw}


def _core() -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in _pyproject()["project"]["dependencies"]}


def _guarded_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside a try whose handlers catch ImportError/ModuleNotFoundError."""
    out = set()
    for t in ast.walk(tree):
        if isinstance(t, ast.Try):
            for h in t.handlers:
                names = list(h.type.elts) if isinstance(h.type, ast.Tuple) else [h.type]
                if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names):
                    out |= {id(n) for stmt in t.body for n in ast.walk(stmt)}
    return out


def third_party_imports(src: Path = SRC):
    """(relative path, line, top-level module, lazy?, guarded?) for every absolute import outside the
    standard library and geovl itself, including imports inside functions and ``__import__("x")``."""
    out = []
    for p in sorted(src.rglob("*.py")):
        tree = ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
        guarded = _guarded_nodes(tree)
        module_level = {id(n) for n in tree.body}
        module_level |= {
            id(n)
            for stmt in tree.body
            if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            for n in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "__import__"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names = [node.args[0].value]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "geovl" or top == "__future__":
                    continue
                out.append(
                    (p.relative_to(src).as_posix(), node.lineno, top, id(node) not in module_level, id(node) in guarded)
                )
    return out


def dist_name(module: str) -> str:
    return canonicalize_name(DIST_OF.get(module, module))


def allowed_extras(rel: str) -> set[str]:
    for prefix, extras in PART_EXTRAS:
        if rel == prefix or (prefix.endswith("/") and rel.startswith(prefix)):
            return extras
    return set()


def test_the_walk_sees_lazy_and_guarded_imports():
    found = {(rel, top, lazy, guarded) for rel, _, top, lazy, guarded in third_party_imports()}
    assert ("evaluate/compare_report.py", "matplotlib", True, False) in found  # inside render_chart()
    assert ("geo/aoi.py", "fiona", True, True) in found  # try: import fiona / except ImportError
    assert any(rel == "geo/indices.py" and top == "yaml" for rel, top, *_ in found)  # __import__("yaml")
    assert not any(top in ("os", "json", "geovl") for _, top, *_ in found)


def test_every_third_party_import_is_declared():
    core, extras = _core(), _extras()
    problems = []
    for rel, line, top, lazy, _guarded in third_party_imports():
        dist = dist_name(top)
        if dist in core:
            continue
        if top in UNDECLARED_OPTIONAL:
            continue
        part = allowed_extras(rel)
        ok_extras = {e for e in part if dist in extras[e]}
        if ok_extras:
            continue
        in_any = sorted(e for e, ds in extras.items() if dist in ds)
        if in_any and not part and lazy:
            continue  # a lazy import in a shared module, e.g. for an optional output, from a declared extra
        where = f"only in extra(s) {in_any}, not core or {sorted(part) or 'core'}" if in_any else "not declared"
        problems.append(f"src/geovl/{rel}:{line}: import {top} (dist {dist}) is {where}")
    assert not problems, "\n".join(problems)


def test_declared_dependencies_are_importable_names_we_use_or_known_runtime_needs():
    """No stale declarations: every core/extra dist is imported somewhere in src, or is a known runtime
    need that is not imported by name."""
    runtime_only = {
        "jinja2": "transformers renders chat templates with it",
        "accelerate": "transformers' Trainer needs it for every training run",
        "python-multipart": "starlette's MultiPartParser (serve/geo_api.py) imports it",
        "gradio-client": "gradio's client half, pinned with gradio",
        "tensorboard": "the default report_to of the SFT/GRPO recipes",
        "torch": "imported",
        "geovl": "self reference",
    }
    imported = {dist_name(top) for _, _, top, _, _ in third_party_imports()}
    declared = _core() | set().union(*_extras().values())
    test_only = {
        canonicalize_name(Requirement(r).name) for r in _pyproject()["project"]["optional-dependencies"]["test"]
    }
    stale = sorted(d for d in declared - imported - test_only if d not in runtime_only)
    assert not stale, f"declared but never imported in src/geovl: {stale}"


def _pins() -> dict[str, str]:
    pins = {}
    for f in ("requirements.txt", "constraints.txt"):
        for ln in (ROOT / f).read_text(encoding="utf-8").splitlines():
            m = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s#;]+)", ln)
            if m:
                pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def test_floors_agree_with_the_verified_pins():
    pins = _pins()
    reqs = [Requirement(r) for r in _pyproject()["project"]["dependencies"]]
    for extra in _pyproject()["project"]["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    bad, unpinned = [], []
    for r in reqs:
        name = canonicalize_name(r.name)
        if name == "geovl":
            continue
        if name not in pins:
            unpinned.append(name)
        elif not r.specifier.contains(pins[name], prereleases=True):
            bad.append(f"{r} does not admit the pinned {name}=={pins[name]}")
    assert not bad, "\n".join(bad)
    assert not unpinned, f"declared in pyproject but not pinned in requirements.txt/constraints.txt: {unpinned}"


@pytest.mark.parametrize(
    "src, expect",
    [
        ("import fancylib\n", "fancylib"),
        ("def f():\n    from fancylib.sub import x\n", "fancylib"),
    ],
)
def test_an_undeclared_import_is_reported(tmp_path, src, expect, monkeypatch):
    """The check can fail: a module importing an undeclared library is named with its line."""
    (tmp_path / "mod.py").write_text(src)
    found = third_party_imports(tmp_path)
    assert [t for _, _, t, _, _ in found] == [expect]
    monkeypatch.setattr(sys.modules[__name__], "third_party_imports", lambda: [("mod.py", 1, expect, True, False)])
    with pytest.raises(AssertionError, match=r"mod\.py:1: import fancylib \(dist fancylib\) is not declared"):
        test_every_third_party_import_is_declared()


def test_the_tests_imports_are_declared_too():
    """The test suite needs only what pyproject declares (core, any extra, or [test]) plus its own helpers."""
    local = {p.stem for d in ("tests", "bench") for p in (ROOT / d).glob("*.py")}
    declared = _core() | set().union(*_extras().values())
    missing = sorted(
        f"tests/{rel}:{line}: import {top}"
        for rel, line, top, _, _ in third_party_imports(ROOT / "tests")
        if top not in local and top not in UNDECLARED_OPTIONAL and dist_name(top) not in declared
    )
    assert not missing, "\n".join(missing)
