"""The folders are layered without cycles, and the code shows it.

    custom_ops, store            the bottom: numpy, annoy, the Python-op API; nothing of attmemo above
    models                       attmemo's own small learned models (torch, only when training)
    transforms                   the graph passes: may use custom_ops and store
    export                       Hugging Face -> ONNX: may use transforms and below
    builder                      records a corpus with the model and trains the keys: export and below
    attmemo                      sessions, CLI, calibration, evaluation: on top

Every import of every module counts, also the ones inside functions: a lazy import that
runs up the layers is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"custom_ops": "custom_ops", "store": "store", "models": "models", "transforms": "transforms",
           "export": "export", "builder": "builder", "attmemo": "attmemo"}
# What each layer may import of attmemo (besides itself).
MAY_USE = {
    "custom_ops": set(),
    "store": set(),
    "models": set(),
    "transforms": {"custom_ops", "store"},
    "export": {"transforms", "custom_ops", "store"},
    "builder": {"export", "transforms", "custom_ops", "store", "models"},
    "attmemo": set(FOLDERS),
}
# Third-party packages a layer must not import at all (serving stays light; see docs/design.md).
BANNED = {
    "custom_ops": {"onnxruntime_extensions", "onnx", "onnxscript", "onnx_ir", "torch", "transformers"},
    "store": {"onnxruntime", "onnxruntime_extensions", "onnx", "onnxscript", "onnx_ir", "torch", "transformers"},
}
# The one module through which custom_ops reach onnxruntime-extensions (it avoids its package __init__).
ORTX_GATEWAY = ROOT / "custom_ops" / "ortx.py"


def _imports(path: Path, package: str) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved inside ``package``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add(f"attmemo.{package}" if package != "attmemo" else "attmemo")
            elif node.module:
                names.add(node.module)
    return names


def _layer_of(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "attmemo":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in FOLDERS else "attmemo"


MODULES = [(layer, path) for layer, folder in FOLDERS.items() for path in sorted((ROOT / folder).glob("*.py"))]


@pytest.mark.parametrize("layer, path", MODULES, ids=[f"{layer}/{p.name}" for layer, p in MODULES])
def test_no_module_imports_up_the_layers(layer, path):
    used = {_layer_of(name) for name in _imports(path, layer)} - {None, layer}
    assert used <= MAY_USE[layer], f"{path.relative_to(ROOT)} imports attmemo.{sorted(used - MAY_USE[layer])[0]}"
    third_party = {name.split(".")[0] for name in _imports(path, layer)}
    banned = third_party & BANNED.get(layer, set())
    if path == ORTX_GATEWAY:
        banned -= {"onnxruntime_extensions"}
    assert not banned, f"{path.relative_to(ROOT)} imports {sorted(banned)[0]}"


def test_names_carried_through_files_and_graphs_are_defined_once():
    """"L{layer}", "b{bucket}..." and the fed input names are spelled in one leaf module each."""
    spellings = {'f"L{layer}"': ROOT / "store" / "layout.py", "/b{bucket}.": ROOT / "store" / "layout.py",
                 "stored_probs.": ROOT / "transforms" / "names.py",
                 'f"attmemo.L{': ROOT / "transforms" / "names.py"}
    for spelling, home in spellings.items():
        found = [p for _, p in MODULES if spelling in p.read_text()]
        assert found == [home], f"{spelling!r} is spelled in {[str(p.relative_to(ROOT)) for p in found]}"


RAY_BUILD = ROOT / "builder" / "ray_build.py"


def test_ray_is_imported_by_the_ray_build_only_and_lazily():
    """Ray is an optional extra (pip install attmemo[ray]): only builder/ray_build.py imports it, inside functions."""
    users = [path for layer, path in MODULES if "ray" in {name.split(".")[0] for name in _imports(path, layer)}]
    assert users == [RAY_BUILD], f"ray is imported by {[str(p.relative_to(ROOT)) for p in users]}"
    top_level = ast.parse(RAY_BUILD.read_text()).body
    eager = [node for node in top_level if isinstance(node, (ast.Import, ast.ImportFrom))
             and any(name.split(".")[0] == "ray" for name in
                     ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]))]
    assert not eager, "builder/ray_build.py imports ray at module level; import it inside the functions that need it"
