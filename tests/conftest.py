"""Shared fixtures: bundles compiled once per session (compiling is the slow part)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import edgeopt

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def l1_bundle(tmp_path_factory) -> Path:
    """efficientformer_l1, ORT fp32."""
    out = tmp_path_factory.mktemp("bundles") / "l1-fp32.bundle"
    return edgeopt.compile("efficientformer_l1", output=out, samples=4).path


@pytest.fixture(scope="session")
def l1_int8_bundle(tmp_path_factory) -> Path:
    """efficientformer_l1, ORT static int8 QDQ."""
    out = tmp_path_factory.mktemp("bundles") / "l1-int8.bundle"
    return edgeopt.compile("efficientformer_l1", passes="quantize:int8", output=out, samples=4).path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 (tests/_sshd.py), one per test module; skipped where sshd is missing."""
    from _sshd import sshd_missing, start_sshd

    if sshd_missing():
        pytest.skip(sshd_missing())
    s = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield s
    s.stop()


@pytest.fixture()
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture()
def cli_env(tmp_path) -> dict[str, str]:
    """Environment for CLI subprocesses: an isolated database."""
    env = dict(os.environ)
    env["EDGEOPT_DB"] = f"sqlite:///{tmp_path / 'cli.db'}"
    return env
