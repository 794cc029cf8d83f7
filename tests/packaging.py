"""Building the distribution's wheel from a copy of the checkout, and pip in any environment."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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
