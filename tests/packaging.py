"""The distribution's wheel from a copy of the checkout, pip, and examples run as a user would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def pip(python: Path, *args: str, timeout: float = 240) -> str:
    """Run the environment's pip; its output, or the test fails with it."""
    run = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def build_wheel(tmp_path: Path) -> Path:
    """The distribution's wheel, built from a copy of the checkout with the service in it."""
    source = tmp_path / "checkout"  # a copy: building writes build/ and egg-info into it
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("inngest_gateway", "service"):  # the service too: it must stay out
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    out = tmp_path / "dist"
    pip(Path(sys.executable), "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "--no-index", "--wheel-dir", str(out), str(source), timeout=120)  # fmt: skip
    [wheel] = out.glob("inngest_gateway-*.whl")
    return wheel


def run_example(
    python: Path | str, code: str, *, cwd: Path, env: Mapping[str, str], timeout: float
) -> dict[str, Any]:
    """Run `code` (a README example and what follows it) in a process of its own; the JSON
    object its last line prints, or the test fails with its output."""
    run = subprocess.run(
        [str(python), "-c", code],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return result
