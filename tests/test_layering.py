"""The package's layering and function length, checked on the source (AST, no imports run).

    python -m pytest -q tests/test_layering.py

Layers, top to bottom; a module may import its own layer's other components or any layer below,
never one above, and the components of one layer must not import each other in a cycle:

    cli, __main__                                   entry points
    apps          demo, demo_report, study, bench   applications: whole pipelines and reports
    train, eval, export, merge, init_from,          the library's stages
    inference, serve
    model, data, tokenizer, corpus, step            building blocks (model/ imports no stage)
    utils, threads, allocator, …                    helpers that know nothing of the rest

A component is the first name under `mmbert` (`mmbert.train.loop` → train). Every import counts,
those inside functions included. Inside the package nothing imports the package root (`import
mmbert`, `from mmbert import X`): the root is the users' facade; import from the defining module.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PKG = SRC / "mmbert"

LAYERS = [
    {"cli", "__main__"},
    {"apps"},
    {"train", "eval", "export", "merge", "init_from", "inference", "serve"},
    {"model", "data", "tokenizer", "corpus", "step"},
    {"utils", "threads", "version", "temperature", "allocator"},
]
LAYER_OF = {c: i for i, layer in enumerate(LAYERS) for c in layer}

# ONNX export is built on inference (it exports inference's bare encoder and checks itself with
# inference's embedding), while inference loads models through export.hf: export.onnx is therefore
# its own component, above inference, rather than part of `export`.
COMPONENT_OF_MODULE = {"mmbert.export.onnx": "export.onnx"}
LAYER_OF["export.onnx"] = LAYER_OF["export"]

# (importer component, imported component): known violations, each with its reason and owner, to be
# removed once fixed. Empty: the rules hold everywhere.
ALLOWED: set[tuple[str, str]] = set()

# a function may be longer than this only with a `# long: <reason>` comment on the line before its def
MAX_FUNCTION_LINES = 80
# Functions over the limit that someone is still to split, "path:name" → reason and owner (or the
# function gets a `# long:` reason). test_long_allow_list_has_no_stale_entries fails once one is
# fixed, so the entry leaves with the fix. Empty: every function fits.
LONG_ALLOWED: dict[str, str] = {}


@functools.lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _component(module: str) -> str | None:
    """`mmbert.train.loop` → train; None for the package root itself."""
    for prefix, comp in COMPONENT_OF_MODULE.items():
        if module == prefix or module.startswith(prefix + "."):
            return comp
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


@functools.lru_cache(maxsize=None)
def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of the package in the file, at any depth; for
    `from a.b import c` both a.b and a.b.c are candidates, and the deepest one that is a module wins."""
    module = _module_name(path)
    out = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "mmbert"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "mmbert":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                is_module = (SRC / Path(*sub.split("."))).with_suffix(".py").exists() or \
                    (SRC / Path(*sub.split("."))).is_dir()
                out.append((node.lineno, sub if is_module else target))
    return out


def _sources() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


@functools.lru_cache(maxsize=None)
def _graph() -> dict[tuple[str, str], list[str]]:
    """(importer component, imported component) → ['file:line', ...], across components only."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in _sources():
        src = _component(_module_name(path))
        for line, target in _imports(path):
            dst = _component(target)
            if src is not None and dst is not None and dst != src:
                edges.setdefault((src, dst), []).append(f"{path.relative_to(SRC)}:{line}")
    return edges


def test_every_component_has_a_layer():
    comps = {_component(_module_name(p)) for p in _sources()} - {None}
    assert not comps - set(LAYER_OF), f"add these to a layer in tests/test_layering.py: {comps - set(LAYER_OF)}"


def _exists(module: str) -> bool:
    base = SRC / Path(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def test_every_import_of_the_package_names_a_module_that_exists():
    stale = [f"{p.relative_to(SRC)}:{line} {target}" for p in _sources() for line, target in _imports(p)
             if not _exists(target)]
    assert not stale, f"imports of modules that do not exist (moved or renamed?): {stale}"


def test_no_import_of_the_package_root_inside_the_package():
    bad = [f"{p.relative_to(SRC)}:{line}" for p in _sources() if p.parent != PKG or p.name != "__init__.py"
           for line, target in _imports(p) if target == "mmbert"]
    assert not bad, f"import the defining module, not the package root (its public facade): {bad}"


def test_imports_point_down():
    upward = {f"{a} → {b}": where for (a, b), where in _graph().items()
              if LAYER_OF[b] < LAYER_OF[a] and (a, b) not in ALLOWED}
    assert not upward, f"imports from a higher layer: {upward}"


def test_no_cycles_between_components():
    edges = {e for e in _graph() if e not in ALLOWED}
    succ: dict[str, set[str]] = {}
    for a, b in edges:
        succ.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1 on the DFS stack, 2 done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(succ.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, stack + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(succ):
        if start not in state and (cycle := visit(start, [start])):
            where = {f"{a} → {b}": _graph()[(a, b)] for a, b in zip(cycle, cycle[1:])}
            raise AssertionError(f"components import each other in a cycle {' → '.join(cycle)}: {where}")


def test_model_imports_nothing_above_it():
    above = {f"model → {b}": where for (a, b), where in _graph().items() if a == "model" and LAYER_OF[b] <= LAYER_OF[a]}
    assert not above, f"model/ may import only the helpers below it: {above}"


def test_long_allow_list_has_no_stale_entries():
    """An entry whose function is gone or now short must leave LONG_ALLOWED (so the list only shrinks)."""
    still_long = set()
    for path in _sources():
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                still_long.add(f"{path.relative_to(SRC)}:{node.name}")
    assert not set(LONG_ALLOWED) - still_long, f"remove from LONG_ALLOWED: {set(LONG_ALLOWED) - still_long}"


def test_functions_fit_on_a_screen():
    long = []
    for path in _sources():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(_tree(path)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            n = node.end_lineno - node.lineno + 1
            before = lines[first - 2].strip() if first >= 2 else ""
            key = f"{path.relative_to(SRC)}:{node.name}"
            if n > MAX_FUNCTION_LINES and not before.startswith("# long:") and key not in LONG_ALLOWED:
                long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, (f"functions over {MAX_FUNCTION_LINES} lines: split them, or say why one must be long "
                      f"in a `# long: <reason>` comment on the line before its def: {long}")


# files with an `except ImportError` around one of our own modules, to be removed by the owner named
GUARD_ALLOWED: dict[str, str] = {}


def test_no_import_guard_around_our_own_modules():
    """`try: from mmbert.x import y / except ImportError` can never fire inside the package: the guard
    only hides a real error (a typo, a broken module) behind a silently skipped feature."""
    guarded = set()
    for path in _sources():
        for node in ast.walk(_tree(path)):
            if not isinstance(node, ast.Try):
                continue
            ours = any(isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "mmbert" or
                       isinstance(n, ast.Import) and any(a.name.split(".")[0] == "mmbert" for a in n.names)
                       for stmt in node.body for n in ast.walk(stmt))
            catches = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            if ours and catches & {"ImportError", "ModuleNotFoundError"}:
                guarded.add(str(path.relative_to(SRC)))
    assert not guarded - set(GUARD_ALLOWED), f"import guards around our own modules: {guarded - set(GUARD_ALLOWED)}"
    assert not set(GUARD_ALLOWED) - guarded, f"remove from GUARD_ALLOWED: {set(GUARD_ALLOWED) - guarded}"
