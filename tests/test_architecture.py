"""The structure the code promises (docs/architecture.md): layers import downward only, without circles; only
the adapters know model internals; entry points are thin shells over the library."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nirvana"
# Lower number = lower layer. A module may import modules of its own layer or below, never above.
LAYERS = {
    "paths": 0, "atomic": 0, "provenance": 0, "tiny": 0, "requirements": 0, "loggers": 0, "checkpoint_code": 0,
    "sysmem": 0, "schema": 0,
    "adapters": 1, "texts": 1, "results": 1, "models": 1, "tasks": 1, "assets": 1,
    "surgery": 2, "deploy": 2, "scoring": 3, "allocation": 4, "calibration": 5, "probe": 6, "baselines": 6, "pruners": 7,
    "pipeline": 8, "quantization": 8, "evaluation": 9, "recovery": 9, "config": 10, "backfill": 11, "reporting": 11, "bench": 12,
}
# Names that only an adapter may spell: a model's modules and attribute paths.
MODEL_INTERNALS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "self_attn",
                   "EncDecAttention", "SelfAttention", "DenseReluDense", "lm_head", "wi_0", "wi_1", "decoder_layers"}


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported nirvana module, names taken from it) for every import statement, at any depth."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "nirvana"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "nirvana":
                names = [a.name for a in node.names]
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules()]
                out += [(s, []) for s in subs] or [(target, names)]
    return out


def layer_of(module: str) -> int:
    return LAYERS[module.split(".")[1]] if module != "nirvana" else -1


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {t for t, _ in imports(m, p) if t in mods and t != m} for m, p in mods.items()}


def test_every_module_has_a_layer():
    assert {m.split(".")[1] for m in modules() if m != "nirvana"} <= set(LAYERS)


def test_no_import_circle_inside_nirvana():
    g, state, circles = graph(), {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(g[m]):
            if state.get(t) == "open":
                circles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    # a package's __init__ importing its own submodules is its face, not a circle
    circles = [c for c in circles if not all(x.startswith(c[0].rsplit(".", 1)[0]) for x in c) or len(c) > 3]
    assert not circles, circles


def test_layers_import_downward_only():
    upward = [(m, t) for m, targets in graph().items() for t in targets if layer_of(t) > layer_of(m)]
    assert not upward, upward


def test_no_module_imports_a_private_name_of_another():
    found = [(m, t, n) for m, p in modules().items() for t, names in imports(m, p) for n in names
             if n.startswith("_") and not n.startswith("__") and t != m]
    assert not found, found


def _code_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
            if node.attr == "layers" and isinstance(node.value, ast.Attribute) and node.value.attr == "model":
                names.add("decoder_layers")  # model.model.layers: a decoder's block list
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 40:
            names.add(node.value)  # short strings: names looked up by getattr / named_modules
    return names


@pytest.mark.parametrize("path", sorted(p for p in (*PACKAGE.rglob("*.py"), *(ROOT / "experiments").glob("*.py"))
                                        if "adapters" not in p.parts and "checkpoint_code" not in p.parts),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_only_adapters_name_model_internals(path):
    assert not _code_names(ast.parse(path.read_text())) & MODEL_INTERNALS


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.py")), ids=lambda p: p.name)
def test_entry_points_are_thin_and_import_only_the_library(path):
    tree = ast.parse(path.read_text())
    assert len(path.read_text().splitlines()) <= 120
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m.split(".")[0] == "experiments"}


OUTSIDE = ("REFERENCE" + ".md", "OFFLINE" + ".md", "DESIGN" + ".md", "../" + "shared")


def test_nothing_cites_documents_outside_the_repository():
    offenders = [str(p.relative_to(ROOT)) for folder in ("nirvana", "experiments", "conf", "tests", "notebooks", "docs")
                 for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".md", ".ipynb")
                 and p.name != "test_architecture.py" and any(s in p.read_text() for s in OUTSIDE)]
    assert not offenders


# A module path written as text — an import inside a subprocess script or a docs code block, or a reference such as
# `nirvana.scoring.schedule` or (nirvana.surgery.checkpoint) in a comment — is not checked by any import, so a move
# leaves it stale without failing; this reads them all and resolves each to a module or a module's attribute.
TEXT_IMPORT = re.compile(r"(?:^|[\s;\"'])(?:from\s+(nirvana(?:\.\w+)*)\s+import\s+([\w, ]+)|import\s+(nirvana(?:\.\w+)*))")
TEXT_REFERENCE = re.compile(r"[`(](nirvana(?:\.\w+)+)(?:\(\))?[`)]")
WRITTEN = ["nirvana", "tests", "experiments", "docs", "notebooks", "README.md", "Makefile"]


def _resolves(dotted: str) -> bool:
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_module_paths_written_as_text_resolve():
    files = [p for w in WRITTEN for p in ([ROOT / w] if (ROOT / w).is_file() else (ROOT / w).rglob("*"))
             if p.suffix in {".py", ".md", ".ipynb", ""} and p.is_file() and "__pycache__" not in p.parts]
    stale = set()
    for path in files:
        text = path.read_text(errors="ignore")
        for module, names, plain in TEXT_IMPORT.findall(text):
            if module:
                taken = [n.split(" as ")[0].strip() for n in names.split(",")]
                stale |= {f"{path.name}: from {module} import {n}" for n in taken if n and not _resolves(f"{module}.{n}")}
            elif not _resolves(plain):
                stale.add(f"{path.name}: import {plain}")
        stale |= {f"{path.name}: {ref}" for ref in TEXT_REFERENCE.findall(text) if not _resolves(ref)}
    assert not stale, "\n".join(sorted(stale))
