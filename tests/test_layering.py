"""The package's layering: every ``opomjax`` import inside the package goes along an allowed edge.

The data's way through the house (DESIGN.md): photos -> ``faces`` -> ``data`` -> ``models`` -> ``core``.
``core`` is pure JAX and imports no other layer; ``models`` reads weight files through its one resolver
(``models.checkpoints``) and the ONNX reader, which ``faces`` may use too (YuNet and dlib's landmark model are
model files) — but ``faces`` never reaches into a network's code. ``pipeline`` (experiment plumbing) and
``protect`` (the tool) sit on top; ``protect`` does not use the experiment plumbing. ``files`` (the mask file
format) and ``frame`` are leaves every layer may use.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "opomjax"

#: layer -> the opomjax modules (prefixes) it may import besides itself.
ALLOWED = {
    "core": ("opomjax.frame",),
    "models": ("opomjax.frame", "opomjax.files"),
    "faces": ("opomjax.frame", "opomjax.models.checkpoints", "opomjax.models.onnx.reading"),
    "data": ("opomjax.frame", "opomjax.faces", "opomjax.models.checkpoints"),
    "pipeline": ("opomjax.frame", "opomjax.files", "opomjax.core", "opomjax.models", "opomjax.data",
                 "opomjax.faces"),
    "protect": ("opomjax.frame", "opomjax.files", "opomjax.core", "opomjax.models", "opomjax.faces"),
    "files": (),
    "frame": (),
}
#: The package root only re-exports (lazily) and dispatches the command line.
ROOT_MODULES = {"__init__", "__main__", "cli"}


def _layer(path: pathlib.Path) -> str:
  rel = path.relative_to(PACKAGE)
  return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
  """Every ``opomjax...`` module a file imports, with ``from opomjax import x`` read as ``opomjax.x``."""
  found = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found += [(node.lineno, a.name) for a in node.names if a.name.startswith("opomjax")]
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("opomjax") and not node.level:
      found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
  return found


def _allowed(layer: str, module: str) -> bool:
  if module in ("opomjax", "opomjax.__version__") or module.startswith(f"opomjax.{layer}."):
    return True
  if module == f"opomjax.{layer}":
    return True
  return any(module == p or module.startswith(p + ".") for p in ALLOWED[layer])


def _package_files():
  return sorted(p for p in PACKAGE.rglob("*.py") if _layer(p) not in ROOT_MODULES)


def test_every_module_belongs_to_a_known_layer():
  unknown = sorted({_layer(p) for p in _package_files()} - set(ALLOWED))
  assert not unknown, f"modules outside the known layers: {unknown}; add them to ALLOWED with their edges"


@pytest.mark.parametrize("path", _package_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layering(path):
  layer = _layer(path)
  bad = [f"line {line}: {module}" for line, module in _imports(path) if not _allowed(layer, module)]
  assert not bad, f"{path.relative_to(PACKAGE)} ({layer}) imports against the layering: {bad}"


def test_the_checker_sees_a_forbidden_edge(tmp_path):
  """The checker itself: a core module importing the pipeline is caught."""
  (tmp_path / "m.py").write_text("from opomjax.pipeline import runner\nimport opomjax.core.hulls\n")
  assert [m for _, m in _imports(tmp_path / "m.py") if not _allowed("core", m)] == ["opomjax.pipeline.runner"]
