"""ONNX Runtime sessions and ONNX files on disk: the one place that creates ORT sessions (used by export
checks, passes and the runtime) and the helpers for graphs with external data.

External data layout (docs/backends.md): a graph `NAME.onnx` whose tensors live outside the protobuf keeps
them all in ONE file `NAME.onnx.data` next to it, every `location` relative to the graph's folder. Sessions
are always created from the path, so ONNX Runtime finds the data file beside the graph. The onnx package
is imported lazily: the device side needs only onnxruntime.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgeopt.errors import EdgeoptError

# A graph whose tensors exceed this is saved with external data (protobuf's hard limit is 2 GiB).
EXTERNAL_DATA_ABOVE = int(1.8 * 1024**3)
DATA_SUFFIX = ".data"
# Tensors larger than ALIGN_ABOVE start on an ALIGN boundary when data files are merged (page-aligned, so a
# runtime can map them), as onnx_ir aligns large tensors when it writes external data.
ALIGN = 4096
ALIGN_ABOVE = 1024**2
_CHUNK = 8 * 1024**2


def ort_session(path: str | Path, threads: int | None = None, optimization: str = "all", profile_prefix: str | None = None) -> Any:
    """A CPU InferenceSession with `threads` intra-op threads (None/0 = the runtime's default), created from
    the file's path so that ONNX Runtime reads a graph's external data from the files beside it.
    `profile_prefix`: ONNX Runtime's profiler on, its JSON written to `PREFIX_<date>.json` (`end_profiling`)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_run_all(path: str | Path, samples: list[dict[str, np.ndarray]], threads: int | None = None) -> list[dict[str, np.ndarray]]:
    """Run every sample through the ONNX file; outputs keyed by the graph's output names."""
    s = ort_session(path, threads)
    ins = [i.name for i in s.get_inputs()]
    outs = [o.name for o in s.get_outputs()]
    return [dict(zip(outs, s.run(outs, {n: x[n] for n in ins}), strict=True)) for x in samples]


def ort_op_profile(path: str | Path, sample: dict[str, np.ndarray], runs: int = 20, warmup: int = 3,
                   threads: int | None = None) -> dict[str, float]:
    """Share of kernel time per op type (the kernels ONNX Runtime runs after its graph optimisations, e.g.
    QLinearConv, FusedConv), from its profiler over `runs` calls after `warmup`; shares sum to 1, largest first."""
    import json

    with tempfile.TemporaryDirectory(prefix="edgeopt-prof-") as tmp:
        s = ort_session(path, threads, profile_prefix=str(Path(tmp) / "ort"))
        feed = {i.name: sample[i.name] for i in s.get_inputs()}
        for _ in range(warmup + runs):
            s.run(None, feed)
        events = json.loads(Path(s.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    calls = 0
    for e in events:
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            calls += 1
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or calls <= warmup:
            continue
        op = (e.get("args") or {}).get("op_name", "?")
        per_op[op] = per_op.get(op, 0.0) + float(e.get("dur", 0))
    total = sum(per_op.values()) or 1.0
    return {k: v / total for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}


# -- ONNX files with external data ------------------------------------------------------------------------


def data_file(path: str | Path) -> Path:
    """The conventional data file of a graph: `NAME.onnx.data` beside `NAME.onnx`."""
    p = Path(path)
    return p.with_name(p.name + DATA_SUFFIX)


def _all_tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto of a ModelProto: initializers, sparse initializers and tensor attributes, in
    subgraphs and functions too."""

    def nodes(nodelist: Any) -> Iterator[Any]:
        for n in nodelist:
            for a in n.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("sparse_tensor"):
                    yield a.sparse_tensor.values
                    yield a.sparse_tensor.indices
                for st in a.sparse_tensors:
                    yield st.values
                    yield st.indices
                if a.HasField("g"):
                    yield from graph(a.g)
                for g in a.graphs:
                    yield from graph(g)

    def graph(g: Any) -> Iterator[Any]:
        yield from g.initializer
        for s in g.sparse_initializer:
            yield s.values
            yield s.indices
        yield from nodes(g.node)

    yield from graph(model.graph)
    for f in model.functions:
        yield from nodes(f.node)


def _is_external(t: Any) -> bool:
    import onnx

    return t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL


@dataclass(frozen=True)
class ExternalRef:
    """Where one tensor's bytes lie: a file inside the graph's folder, an offset and a length."""

    file: Path
    offset: int
    length: int


def external_refs(model: Any, base: Path, what: str = "the graph") -> list[tuple[Any, ExternalRef]]:
    """(tensor, where its bytes lie) for every tensor of `model` with external data, relative to `base`
    (the graph's folder). Refuses a location that is absolute or leads outside `base` (`..`, a link), a
    missing file, and an offset/length beyond the file's end."""
    root = base.resolve()
    out = []
    sizes: dict[Path, int] = {}
    for t in _all_tensors(model):
        if not _is_external(t):
            continue
        kv = {e.key: e.value for e in t.external_data}
        loc = kv.get("location", "")
        rel = Path(loc)
        if not loc or rel.is_absolute() or ".." in rel.parts or not (root / rel).resolve().is_relative_to(root):
            raise EdgeoptError(
                f"{what}: tensor {t.name!r} keeps its data at {loc!r}, outside the graph's folder {base}",
                "external data must lie in files next to the .onnx file (relative locations, no '..' or links)",
            )
        f = root / rel
        if not f.is_file():
            raise EdgeoptError(f"{what}: external data file {loc!r} of tensor {t.name!r} is missing",
                               "keep the .onnx file and its data file(s) together in one folder")
        size = sizes.setdefault(f, f.stat().st_size)
        try:
            offset = int(kv.get("offset", 0))
            length = int(kv["length"]) if "length" in kv else size - offset
        except ValueError:
            raise EdgeoptError(f"{what}: tensor {t.name!r} has a malformed external data offset/length",
                               "re-export the model") from None
        if offset < 0 or length < 0 or offset + length > size:
            raise EdgeoptError(
                f"{what}: tensor {t.name!r} reads bytes {offset}..{offset + length} of {loc!r}, which holds {size}",
                "the data file is truncated or belongs to another graph; re-export the model",
            )
        out.append((t, ExternalRef(f, offset, length)))
    return out


def uses_external_data(path: str | Path) -> bool:
    """Whether the ONNX file keeps any tensor outside its protobuf (reads the graph only, not the data)."""
    import onnx

    return any(_is_external(t) for t in _all_tensors(onnx.load(str(path), load_external_data=False)))


def onnx_bytes(path: str | Path) -> int:
    """Size on disk of an ONNX graph and the external data files it refers to."""
    import onnx

    p = Path(path)
    model = onnx.load(str(p), load_external_data=False)
    files = {ref.file for _, ref in external_refs(model, p.parent, str(p))}
    return p.stat().st_size + sum(f.stat().st_size for f in files)


def remove_onnx(path: str | Path) -> None:
    """Delete an ONNX graph and its conventional data file (`NAME.onnx.data`), where present."""
    Path(path).unlink(missing_ok=True)
    data_file(path).unlink(missing_ok=True)


@contextmanager
def staged_onnx(dst: str | Path) -> Iterator[Path]:
    """A path with `dst`'s name in a fresh folder beside it, for a tool that writes a graph (and maybe its
    data); on success the data file, then the graph, are renamed over `dst`'s (a stale data file is
    removed), so `dst` is never seen half-written. When the tool wrote other data files, or another name,
    the graph is first brought to the one-data-file layout (as `copy_onnx`). On failure `dst` is unchanged."""
    dst = Path(dst)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        staged = tmp / dst.name
        yield staged
        if not staged.is_file():
            raise EdgeoptError(f"no graph was written for {dst}", "this is a bug in edgeopt")
        if any(p.name != dst.name for p in tmp.iterdir()):
            import onnx

            refs = external_refs(onnx.load(str(staged), load_external_data=False), tmp, str(dst))
            if any(ref.file != data_file(staged).resolve() for _, ref in refs):
                (tmp / "layout").mkdir()
                staged = _write_layout(staged, tmp / "layout" / dst.name)
        if data_file(staged).is_file():
            data_file(staged).replace(data_file(dst))
        else:
            data_file(dst).unlink(missing_ok=True)
        staged.replace(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _proto_bytes(model: Any) -> int:
    try:
        return int(model.ByteSize())
    except Exception:  # noqa: BLE001 - a protobuf build that cannot size > 2 GiB messages: count the tensors
        return sum(len(t.raw_data) for t in _all_tensors(model))


def save_onnx(model: Any, dst: str | Path, external: bool | None = None) -> bool:
    """Save an in-memory ModelProto (tensors loaded) to `dst`, atomically. `external`: True keeps every
    tensor of 1 KiB or more in `NAME.onnx.data` beside it, False inlines everything, None does so when the
    model exceeds EXTERNAL_DATA_ABOVE. Returns whether external data was written."""
    import onnx

    dst = Path(dst)
    if external is None:
        external = _proto_bytes(model) > EXTERNAL_DATA_ABOVE
    with staged_onnx(dst) as tmp:
        if external:
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=dst.name + DATA_SUFFIX, size_threshold=1024)
        else:
            onnx.save_model(model, str(tmp))
    return bool(external)


def load_onnx(path: str | Path) -> Any:
    """The ModelProto of `path` with its external data loaded (checked to lie in the graph's folder)."""
    import onnx

    p = Path(path)
    external_refs(onnx.load(str(p), load_external_data=False), p.parent, str(p))
    return onnx.load(str(p), load_external_data=True)


def copy_region(src: IO[bytes], offset: int, length: int, out: IO[bytes], name: str | Path) -> None:
    """Copy bytes offset..offset+length of the open file `src` (named `name` in errors) to `out`, in chunks."""
    src.seek(offset)
    left = length
    while left:
        chunk = src.read(min(_CHUNK, left))
        if not chunk:
            raise EdgeoptError(f"{name} ended before byte {offset + length}", "the data file is truncated; re-export the model")
        out.write(chunk)
        left -= len(chunk)


def aligned_offset(out: IO[bytes], length: int) -> int:
    """Where a tensor of `length` bytes starts in the data file `out` (being appended to): the current end,
    padded to an ALIGN boundary when the tensor is over ALIGN_ABOVE bytes."""
    pos = out.tell()
    if length > ALIGN_ABOVE and pos % ALIGN:
        out.write(b"\0" * (ALIGN - pos % ALIGN))
        pos = out.tell()
    return pos


def point_external(t: Any, location: str, offset: int, length: int, checksum: str | None = None) -> None:
    """Make tensor `t` read its `length` bytes at `offset` of the data file `location` (beside the graph)."""
    import onnx

    del t.external_data[:]
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length)), ("checksum", checksum)):
        if v is not None:
            e = t.external_data.add()
            e.key, e.value = k, v


def _write_layout(src: Path, out: Path) -> Path:
    """Write `src` as `out` in the one-data-file layout (see copy_onnx); not atomic. Returns `out`."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    refs = external_refs(model, src.parent, str(src))
    if not refs:
        shutil.copyfile(src, out)
        return out
    files = {ref.file for _, ref in refs}
    if len(files) == 1:
        shutil.copyfile(next(iter(files)), data_file(out))
        placed = {(ref.file, ref.offset, ref.length): ref.offset for _, ref in refs}
    else:
        placed = {}
        with open(data_file(out), "wb") as f:
            for _, ref in refs:
                key = (ref.file, ref.offset, ref.length)
                if key in placed:
                    continue
                placed[key] = aligned_offset(f, ref.length)
                with open(ref.file, "rb") as src_file:
                    copy_region(src_file, ref.offset, ref.length, f, ref.file)
    loc = out.name + DATA_SUFFIX
    for t, ref in refs:
        checksum = next((e.value for e in t.external_data if e.key == "checksum"), None)
        point_external(t, loc, placed[(ref.file, ref.offset, ref.length)], ref.length, checksum)
    out.write_bytes(model.SerializeToString())
    return out


def copy_onnx(src: str | Path, dst: str | Path) -> bool:
    """Copy an ONNX graph to `dst` in the bundle layout, without loading its tensors into memory.

    A graph without external data is copied byte for byte. Otherwise its data goes to ONE file,
    `dst.name + ".data"`, and every tensor's `location` is rewritten to that name: a single source data
    file is copied whole (offsets kept); several files are concatenated region by region (each distinct
    region once, regions over 1 MiB page-aligned) with new offsets, streamed in chunks. Locations leading
    outside `src`'s folder, missing files and out-of-range offsets are refused (EdgeoptError). Both files
    are written under temporary names and renamed into place. Returns whether the copy has external data."""
    src, dst = Path(src), Path(dst)
    with staged_onnx(dst) as tmp:
        _write_layout(src, tmp)
    return data_file(dst).is_file()
