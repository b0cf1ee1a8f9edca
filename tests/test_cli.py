"""The CLI as a user meets it: one-line errors, exit codes, nothing half-written, nothing stored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from edgeopt.store import Store


def run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeopt.cli", *args], capture_output=True, text=True, env=env, cwd=cwd)


def assert_one_line_error(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    err = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    text = " ".join(err)
    assert text.startswith("error:"), p.stderr
    for w in words:
        assert w in text, (w, text)


def test_models_json(cli_env):
    p = run(["models", "--json"], cli_env)
    assert p.returncode == 0
    names = {m["name"]: m for m in json.loads(p.stdout)}
    assert names["efficientformer_l1"]["paper_params_m"] == 12.29
    assert names["efficientformer_l1"]["inputs"] == {"image": [1, 3, 224, 224]}


def test_unknown_model_suggests(cli_env, tmp_path):
    p = run(["compile", "efficientformer_l9", "-o", str(tmp_path / "x")], cli_env)
    assert_one_line_error(p, "unknown model", "efficientformer_l1")
    assert not (tmp_path / "x").exists()


def test_bad_pass_spec_lists_valid(cli_env, tmp_path):
    p = run(["compile", "efficientformer_l1", "-o", str(tmp_path / "x"), "--passes", "quantise:int8"], cli_env)
    assert_one_line_error(p, "unknown pass", "quantize")
    p = run(["compile", "efficientformer_l1", "-o", str(tmp_path / "x"), "--passes", "quantize:int8,bogus=1"], cli_env)
    assert_one_line_error(p, "bogus")
    assert not (tmp_path / "x").exists()


def test_missing_and_corrupt_weights(cli_env, tmp_path):
    p = run(["compile", "efficientformer_l1", "-o", str(tmp_path / "x"), "--weights", str(tmp_path / "nope.pt")], cli_env)
    assert_one_line_error(p, "does not exist")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage" * 10)
    p = run(["compile", "efficientformer_l1", "-o", str(tmp_path / "x"), "--weights", str(bad)], cli_env)
    assert_one_line_error(p, "cannot read checkpoint")
    assert not (tmp_path / "x").exists()


def test_code_pickle_weights_refused(cli_env, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, p)
    r = run(["compile", "efficientformer_l1", "-o", str(tmp_path / "x"), "--weights", str(p)], cli_env)
    assert_one_line_error(r, "cannot read checkpoint")
    assert "pwned" not in r.stdout


def test_weights_load_round_trip(cli_env, tmp_path):
    import timm

    m = timm.create_model("efficientformer_l1", pretrained=False)
    torch.nn.init.constant_(m.head.bias, 0.25)
    w = tmp_path / "l1.pth"
    torch.save({"model": m.state_dict()}, w)
    p = run(["compile", "efficientformer_l1", "-o", str(tmp_path / "b"), "--weights", str(w), "--exporter", "torchscript"], cli_env)
    assert p.returncode == 0, p.stderr
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man["weights"]["kind"] == "checkpoint" and len(man["weights"]["sha256"]) == 64
    assert man["export"]["exporter"] == "torchscript" and man["export"]["parity"]["cosine"] > 0.99999
    assert man["fidelity"]["cosine"] > 0.99999
    # the summary names the compile's total time and its slowest stages (manifest compile_seconds)
    line = next(ln for ln in p.stdout.splitlines() if ln.strip().startswith("time"))
    assert "export" in line and f"{man['compile_seconds']['total']:.1f} s" in line


def test_unknown_exporter(cli_env, tmp_path):
    p = run(["compile", "efficientformer_l1", "-o", str(tmp_path / "x"), "--exporter", "onnxscript"], cli_env)
    assert_one_line_error(p, "unknown exporter", "dynamo")
    assert not (tmp_path / "x").exists()


def test_profile_errors_store_nothing(cli_env, tmp_path, l1_bundle):
    p = run(["profile", str(tmp_path)], cli_env)
    assert_one_line_error(p, "not a bundle")
    p = run(["profile", str(l1_bundle), "--device", "sssh://x"], cli_env)
    assert_one_line_error(p, "unknown device")
    assert Store(cli_env["EDGEOPT_DB"]).measurements(status=None) == []


def test_profile_json_and_report(cli_env, l1_bundle):
    p = run(["profile", str(l1_bundle), "--runs", "3", "--warmup", "1", "--min-seconds", "0", "--json"], cli_env)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert set(res["latency_ms"]) >= {"p50", "p90", "p99", "mean", "std"}
    for k in ("cv", "runs", "init_ms", "peak_rss_mb", "outputs_match", "energy", "device"):
        assert k in res
    p = run(["report", "--json"], cli_env)
    rows = json.loads(p.stdout)
    assert len(rows) == 1 and rows[0]["bundle_sha256"] == res["bundle_sha256"]


def test_debug_shows_traceback(cli_env, tmp_path):
    p = run(["--debug", "compile", "nope_model", "-o", str(tmp_path / "x")], cli_env)
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_console_script_runs_as_a_batch_process(cli_env):
    """The `edgeopt` script is `cli.entry`: main with the batch collector thresholds, the heap frozen when it
    returns (so the interpreter's exit does not walk it), its exit code passed on; `main` alone changes nothing."""
    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["edgeopt"] == "edgeopt.cli:entry"
    probe = ("import gc, sys; from edgeopt import cli; before = gc.get_threshold(); sys.argv = ['edgeopt', 'models', '--json']; "
             "rc = cli.entry(); print('PROBE', rc, gc.get_threshold() == cli.BATCH_GC_THRESHOLDS, gc.get_freeze_count() > 0, "
             "before != cli.BATCH_GC_THRESHOLDS, file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=cli_env)
    assert "PROBE 0 True True True" in p.stderr, p.stderr
    assert json.loads(p.stdout)
    probe_main = ("import gc, sys; from edgeopt import cli; before = gc.get_threshold(); "
                  "rc = cli.main(['models', '--json']); print('PROBE', rc, gc.get_threshold() == before, gc.get_freeze_count(), file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", probe_main], capture_output=True, text=True, env=cli_env)
    assert "PROBE 0 True 0" in p.stderr, p.stderr
    bad = subprocess.run([sys.executable, "-m", "edgeopt.cli", "compile", "nope_model", "-o", "x"], capture_output=True, text=True, env=cli_env)
    assert bad.returncode == 1 and "unknown model" in bad.stderr
