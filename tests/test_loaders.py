"""Every loader of a file diffes wrote, fed random damage (truncation, garbage bytes, flipped bytes, missing
keys, values of the wrong type, dropped or retyped tensors): only a DiffesError ever escapes."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from valid_files import tiny_library, write_routed, write_run

from diffes.errors import DiffesError
from diffes.fitness.teacher import Teacher
from diffes.pruning import PruningLibrary
from diffes.routing.checkpoint import check_pipeline_files, read_routing
from diffes.runs.rundir import RunDir
from diffes.search import SearchState

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory, a full library (with Gram matrices) and a routed export, all valid."""
    root = tmp_path_factory.mktemp("valid")
    write_run(root / "run")
    pipe, library = tiny_library()
    library.save(root / "library")
    write_routed(root / "routed", pipe, library)
    return root


def _routed(folder: Path) -> None:
    check_pipeline_files(folder, read_routing(folder), verify=True)


def _checkpoint(run: Path) -> None:
    checkpoint = RunDir(run).latest_checkpoint()
    assert checkpoint is not None
    SearchState.from_json(checkpoint["search"])


LOADERS: dict[str, tuple[str, Callable[[Path], object]]] = {
    # file to damage: the loader that reads it, given the fixture's root
    "run/config.json": ("run", lambda p: RunDir.open(p).config()),
    "run/checkpoints/gen_0000.json": ("run", _checkpoint),
    "run/best.json": ("run", lambda p: RunDir(p).best()),
    "run/teacher.json": ("run/teacher.safetensors", Teacher.load),
    "run/teacher.safetensors": ("run/teacher.safetensors", Teacher.load),
    "library/library.json": ("library", PruningLibrary.load),
    "library/scores.safetensors": ("library", PruningLibrary.load),
    "library/grams.safetensors": ("library", PruningLibrary.load),
    "routed/library/plans.json": ("routed/library", PruningLibrary.load),
    "routed/library/plans.safetensors": ("routed/library", PruningLibrary.load),
    "routed/routing.json": ("routed", _routed),
}

# ---- damage ----

# no subnormal floats: the tests flush denormals to zero, as the CLI does
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_subnormal=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=4,
)


def _nodes(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for key, value in items:
        yield from _nodes(value, (*path, key))


def _set(doc: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> Any:
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def damage_json(raw: bytes, data: st.DataObject) -> bytes:
    doc = json.loads(raw)
    kind = data.draw(st.sampled_from(["drop", "replace", "replace", "bytes"]))
    if kind == "bytes":
        return damage_bytes(raw, data)
    nodes = list(_nodes(doc))
    if kind == "drop" and len(nodes) > 1:
        path = data.draw(st.sampled_from(nodes[1:]))
        return json.dumps(_set(doc, path, None, delete=True)).encode()
    path = data.draw(st.sampled_from(nodes))
    return json.dumps(_set(doc, path, data.draw(JSON_VALUES))).encode()


def damage_bytes(raw: bytes, data: st.DataObject) -> bytes:
    kind = data.draw(st.sampled_from(["truncate", "garbage", "flip"]))
    if kind == "truncate":
        return raw[: data.draw(st.integers(0, len(raw) - 1))]
    if kind == "garbage":
        return data.draw(st.binary(max_size=200))
    out = bytearray(raw)
    header = min(len(raw), 200)  # JSON text, or the safetensors header where a flip matters most
    for i in data.draw(st.lists(st.integers(0, header - 1), min_size=1, max_size=4)):
        out[i] ^= data.draw(st.integers(1, 255))
    return bytes(out)


def damage_tensors(path: Path, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["bytes", "drop", "retype", "reshape"]))
    if kind == "bytes":
        path.write_bytes(damage_bytes(path.read_bytes(), data))
        return
    tensors = load_file(str(path))
    key = data.draw(st.sampled_from(sorted(tensors)))
    if kind == "drop":
        del tensors[key]
    elif kind == "retype":
        tensors[key] = tensors[key].to(data.draw(st.sampled_from([torch.int64, torch.bool, torch.float16])))
    else:
        tensors[key] = tensors[key].flatten()[: data.draw(st.integers(0, 3))]
    save_file(tensors, str(path))


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_valid_files_load(files: Path, name: str) -> None:
    target, load = LOADERS[name]
    load(files / target)


@pytest.mark.parametrize("name", sorted(LOADERS))
@SETTINGS
@given(data=st.data())
def test_damaged_files_raise_only_diffes_errors(files: Path, name: str, data: st.DataObject) -> None:
    target, load = LOADERS[name]
    path = files / name
    original = path.read_bytes()
    try:
        if path.suffix == ".json":
            path.write_bytes(damage_json(original, data))
        else:
            damage_tensors(path, data)
        with contextlib.suppress(DiffesError):  # anything else fails the test, with the damage that caused it
            load(files / target)
    finally:
        path.write_bytes(original)
