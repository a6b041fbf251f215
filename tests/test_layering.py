"""The import layering of docs/design.md section 1: modules import only their own layer and those below,
and the import graph has no cycles. Imports are read with ``ast`` (inside functions too), not executed."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: lowest first; a module may import modules of its own layer or of a lower one. Each entry is a top-level
#: module or package name under ``zfscratch`` (``kernels`` is the kernels/ folder, imported as
#: ``zfscratch.kernels``). Keep this list and docs/design.md section 1 in step.
LAYERS = [
    {"util", "errors"},
    {"kernels"},
    {"backend"},
    {"layers", "net", "optim", "gradcheck", "samplerng"},
    {"models", "preprocess", "io", "onnx_io", "data", "viz", "distributed"},
    {"deconv"},
    {"train"},
    {"experiments"},  # the architecture and normalization experiments train twins
    {"pipeline", "report", "bench", "bench_twin", "bench_occlusion", "bench_distributed", "explore"},
    {"commands"},
    {"cli", "__main__"},
]
#: ``zfscratch/__init__.py`` holds only the version and may be imported from anywhere
ANYWHERE = {"", "__init__"}


def _modules():
    """``{dotted name: path}`` of every module of the package (kernels/ mapped into zfscratch)."""
    mods = {}
    for base in ("zfscratch", "kernels"):
        for p in sorted((REPO / base).rglob("*.py")):
            parts = list(p.relative_to(REPO).with_suffix("").parts)
            if parts[0] == "kernels":
                parts.insert(0, "zfscratch")
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = p
    return mods


def _edges(mods):
    """``{(importer, imported)}`` between modules of the package (the longest known prefix of each name)."""
    def known(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    edges = set()
    for m, p in mods.items():
        pkg = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"), str(p))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for name in names:
                if name.startswith("zfscratch"):
                    t = known(name)
                    if t and t != m:
                        edges.add((m, t))
    return edges


def _layer(mod):
    top = mod.split(".")[1] if mod.count(".") else ""
    if top in ANYWHERE:
        return None
    for i, group in enumerate(LAYERS):
        if top in group:
            return i
    raise AssertionError(f"module {mod} is in no layer of tests/test_layering.py LAYERS: add it (and to "
                         f"docs/design.md)")


def test_every_module_has_a_layer():
    for m in _modules():
        _layer(m)


def test_imports_go_downward_only():
    mods = _modules()
    upward = []
    for a, b in sorted(_edges(mods)):
        la, lb = _layer(a), _layer(b)
        if la is not None and lb is not None and lb > la:
            upward.append(f"{a} -> {b}")
    assert not upward, "imports that go up the layering (docs/design.md section 1):\n  " + "\n  ".join(upward)


def test_the_library_never_imports_the_cli():
    bad = [f"{a} -> {b}" for a, b in _edges(_modules())
           if b.split(".")[1:2] in (["cli"], ["commands"]) and a.split(".")[1:2] not in (["cli"], ["commands"],
                                                                                      ["__main__"])]
    assert not bad, "library modules importing the CLI:\n  " + "\n  ".join(sorted(bad))


def test_no_import_cycles():
    mods = _modules()
    graph = {m: set() for m in mods}
    for a, b in _edges(mods):
        graph[a].add(b)
    # a package's __init__ importing its own submodules is not a cycle unless a submodule imports the
    # package back; Tarjan's strongly connected components find every cycle
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in cycles)


def test_the_checker_resolves_imports():
    """The parser resolves relative and absolute imports (so the checks above cannot pass vacuously)."""
    mods = _modules()
    edges = _edges(mods)
    assert ("zfscratch.kernels.cpu.conv", "zfscratch.kernels.cpu.gemm") in edges  # relative import
    assert ("zfscratch.cli", "zfscratch.commands._args") in edges  # absolute import
    assert _layer("zfscratch.cli") > _layer("zfscratch.kernels.cpu")
