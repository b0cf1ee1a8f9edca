"""The emulated arm64 board (qemu-user + an arm64 Debian root file system) and the `qemu-arm64` device.

Marked `emulator`: `make test-emulator` runs them (the board is built from Debian's mirror and the package
index the first time, ~2 min, then taken from the cache). The bad-input tests that need no board are unmarked.
"""

from __future__ import annotations

import json
import shutil

import pytest
from _bundles import tiny_bundle

from edgeopt.errors import DeviceError, EdgeoptError
from edgeopt.harness.board import (
    BOARD_JSON,
    BoardSpec,
    check_board,
    default_spec,
    ensure_board,
    find_board,
    runner_hash,
)
from edgeopt.harness.devices import get_device
from edgeopt.harness.protocol import Protocol, measure

QUICK = Protocol(warmup=1, runs=2, min_seconds=0.0, timeout=900.0, cooldown=False)
needs_tools = pytest.mark.skipif(
    not (shutil.which("qemu-aarch64-static") and shutil.which("mmdebstrap")),
    reason="needs the Debian packages qemu-user-static and mmdebstrap (scripts/system-deps.sh qemu-user-static mmdebstrap)",
)


# ---------------------------------------------------------------------------------------------- bad input, no board


def test_missing_qemu_names_the_debian_package(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no qemu-aarch64-static on PATH
    with pytest.raises(DeviceError) as e:
        get_device("qemu-arm64")
    assert "qemu-aarch64-static" in e.value.message and "qemu-user-static" in (e.value.hint or "")


def test_missing_mmdebstrap_names_the_debian_package(monkeypatch, tmp_path) -> None:
    from edgeopt.harness.board import tool

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DeviceError) as e:
        tool("mmdebstrap")
    assert "mmdebstrap" in e.value.message and "apt-get install mmdebstrap" in (e.value.hint or "")
    spec = BoardSpec(name="qemu-arm64-nomm", debs=("libgomp1",))
    assert check_board(tmp_path / spec.folder_name(), spec) == "not built yet"


def test_board_key_follows_the_package_list() -> None:
    a = default_spec(tvm=False)
    b = default_spec(tvm=True)
    assert a.key() != b.key()
    assert a.key() == default_spec(tvm=False).key()
    assert any(w.startswith("onnxruntime==") for w in a.wheels)  # pinned to the host's version
    assert BoardSpec(debs=("python3",)).key() != BoardSpec(debs=("python3", "libgomp1")).key()


def test_unknown_board_option_is_a_clear_error(tmp_path) -> None:
    if not shutil.which("qemu-aarch64-static"):
        pytest.skip("needs qemu-aarch64-static")
    dev = get_device("qemu-arm64", board=str(tmp_path))
    with pytest.raises(EdgeoptError, match="not a complete board"):
        dev.info()


# ---------------------------------------------------------------------------------------------- cache validity


@pytest.mark.emulator
@needs_tools
def test_incomplete_or_foreign_board_is_rebuilt_not_used(tmp_path) -> None:
    """A small board (libgomp1 only: seconds to build) in a private cache folder."""
    spec = BoardSpec(name="qemu-arm64-cachetest", debs=("libgomp1",), wheels=())
    b1 = ensure_board(spec, cache=tmp_path)
    assert check_board(b1.path, spec) is None
    built = b1.meta["built"], (b1.path / BOARD_JSON).stat().st_ino
    # From the cache: same folder, same build.
    b2 = ensure_board(spec, cache=tmp_path)
    assert (b2.meta["built"], (b2.path / BOARD_JSON).stat().st_ino) == built

    # A board folder whose build was interrupted (no board.json) is rebuilt.
    (b1.path / BOARD_JSON).unlink()
    assert "incomplete" in check_board(b1.path, spec)
    b3 = ensure_board(spec, cache=tmp_path)
    assert check_board(b3.path, spec) is None and (b3.path / BOARD_JSON).stat().st_ino != built[1]

    # A file gone missing: refused.
    (b3.path / "root" / "proc" / "cpuinfo").unlink()
    assert "proc/cpuinfo is missing" in check_board(b3.path, spec)
    # A folder recorded for another package list: refused; either way the next use rebuilds it.
    meta = json.loads((b3.path / BOARD_JSON).read_text())
    meta["spec"]["debs"] = ["libgomp1", "something-else"]
    (b3.path / BOARD_JSON).write_text(json.dumps(meta))
    assert "another package list" in check_board(b3.path, spec)
    b4 = ensure_board(spec, cache=tmp_path)
    assert json.loads((b4.path / BOARD_JSON).read_text())["spec"]["debs"] == ["libgomp1"]
    assert (b4.path / "root" / "proc" / "cpuinfo").read_text().startswith("processor")
    assert not list(tmp_path.glob(".*.tmp-*"))  # no half-built folders left behind


# ---------------------------------------------------------------------------------------------- the real board


@pytest.fixture(scope="module")
def board():
    if not (shutil.which("qemu-aarch64-static") and shutil.which("mmdebstrap")):
        pytest.skip("needs qemu-user-static and mmdebstrap")
    return ensure_board(default_spec())


@pytest.mark.emulator
def test_board_has_arm64_python_wheels_and_runner(board) -> None:
    assert (board.root / "proc" / "cpuinfo").read_text().count("CPU part\t: 0xd08") >= 1
    for dist in ("numpy", "onnxruntime", "ai-edge-litert", "apache-tvm"):
        assert dist in board.runtimes(), board.runtimes()
    h = runner_hash()
    assert board.meta["runner_hash"] == h
    assert (board.root / "opt" / "edgeopt-runners" / h / ".complete").read_text().strip() == h
    p = board.run_python(
        ["-c", "import platform, edgeopt.runner, onnxruntime; print(platform.machine(), edgeopt.runner.__file__, onnxruntime.get_device())"],
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    machine, runner_file, dev = p.stdout.split()
    assert machine == "aarch64" and dev == "CPU"
    # The runner imported is the copy inside the board, never the host's tree.
    assert runner_file == f"/opt/edgeopt-runners/{h}/edgeopt/runner.py", runner_file
    folder, why = find_board(default_spec())
    assert folder == board.path and why is None


@pytest.mark.emulator
def test_runner_on_board_matches_reference_and_is_labelled_emulated(board, tmp_path) -> None:
    from edgeopt.store import Store

    b = tiny_bundle(tmp_path / "tiny.bundle", n=64)
    dev = get_device("qemu-arm64")
    info = dev.info()
    assert info["arch"] == "aarch64" and info["emulated"] is True and "onnxruntime" in info["runtimes"]
    res = measure(dev, b.path, QUICK, info)
    assert res["outputs_match"] is True and res["platform"]["machine"] == "aarch64"
    assert res["check"]["max_abs"] < 1e-4 and res["torch_loaded"] is False
    assert res["device"]["emulated"] is True
    # Pushed into the board's own storage, verified there by sha256.
    assert (board.root / "var/lib/edgeopt/bundles" / b.sha256 / "manifest.json").is_file()
    st = Store(f"sqlite:///{tmp_path / 'r.db'}")
    st.add_measurement(b.manifest, res)
    rows = st.measurements(device="qemu-arm64")
    assert len(rows) == 1 and rows[0]["outputs_match"] is True


@pytest.mark.emulator
def test_runner_crash_under_emulation_reports_its_signal(board, tmp_path) -> None:
    """A real crash: the board without its aarch64 /proc/cpuinfo, where onnxruntime under qemu 7 reads the
    host's x86 one and segfaults. The view shares every other folder with the board (symlinks)."""
    view = tmp_path / "view"
    (view / "root").mkdir(parents=True)
    for entry in board.root.iterdir():
        if entry.name != "proc":
            (view / "root" / entry.name).symlink_to(entry)
    shutil.copy(board.path / BOARD_JSON, view / BOARD_JSON)
    b = tiny_bundle(tmp_path / "tiny.bundle", n=32)
    dev = get_device("qemu-arm64", board=str(view))
    with pytest.raises(DeviceError) as e:
        measure(dev, b.path, QUICK, {"uri": "qemu-arm64"})
    assert "crashed under emulation" in e.value.message and "SIGSEGV" in e.value.message, e.value


@pytest.mark.emulator
def test_tvm_bundle_cross_compiled_for_aarch64_runs_on_board(board, tmp_path) -> None:
    """The one place CI proves a cross-compiled TVM artifact right: built here for cortex-a72, run there."""
    from _tiny import tiny_spec

    import edgeopt
    from edgeopt.runtimes.base import get_backend

    ok, why = get_backend("tvm").available()
    if not ok:
        pytest.skip(f"TVM unavailable on this host: {why}")
    if not shutil.which("aarch64-linux-gnu-gcc"):
        pytest.skip("needs the aarch64 cross compiler (Debian gcc-aarch64-linux-gnu)")
    spec = tiny_spec()
    bundle = edgeopt.compile(spec.name, backend="tvm", target="cortex-a72", output=tmp_path / "t.bundle", samples=2)
    assert bundle.manifest["backend_details"]["host_runnable"] is not True  # it cannot run on x86
    res = measure(get_device("qemu-arm64"), bundle.path, QUICK)
    assert res["outputs_match"] is True, res["check"]
    assert res["platform"]["machine"] == "aarch64"

