"""The browser client as its users get it: its size minified and gzipped, and its types.

terser and TypeScript come from the npm registry, pinned in tests/js/package-lock.json;
`make test` installs them (`npm ci` in tests/js). Missing tools fail these tests, never skip.
"""

from __future__ import annotations

import gzip
import re
import subprocess
from pathlib import Path

import pytest

from inngest_gateway.browser import FOLDER
from tests.processes import ROOT

TOOLS = ROOT / "tests" / "js" / "node_modules" / ".bin"
CLIENT = FOLDER / "inngest-gateway.js"
LIMIT = 3 * 1024  # the promise: under 3 KB minified and gzipped
README = ROOT / "README.md"


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make test` (it runs npm ci in tests/js).")
    return path


# How the client is minified for its size: compressed and mangled, comments dropped, with two
# compress options that suit a source written for reading. `pure_getters`: reading a property
# has no side effect (true here: the objects read are plain data), so the named intermediate
# values fold back into the expressions they name. `inline=1`: a function called once stays a
# function, rather than being inlined with its parameters rebound as new variables.
TERSER_OPTIONS = ["--compress", "inline=1,pure_getters", "--mangle", "--comments", "false"]


def minified(source: Path) -> bytes:
    """The client as terser minifies it (TERSER_OPTIONS)."""
    result = subprocess.run(
        [str(tool("terser")), str(source), *TERSER_OPTIONS],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def client_size() -> int:
    """Bytes of the minified client, gzipped at level 9 (as `gzip -9`)."""
    return len(gzip.compress(minified(CLIENT), compresslevel=9, mtime=0))


def test_the_client_is_under_3_kb_minified_and_gzipped() -> None:
    size = client_size()
    assert size < LIMIT, f"{size} bytes minified and gzipped; the promise is under {LIMIT}"


def test_the_readme_states_the_size_as_measured() -> None:
    """README's figure is the one measured now, to the nearest 50 bytes."""
    match = re.search(r"\*\*([\d,]+) bytes\*\*\s+minified\s+and\s+gzipped", README.read_text())
    assert match, "README states no size of inngest-gateway.js"
    stated = int(match.group(1).replace(",", ""))
    measured = client_size()
    assert abs(stated - measured) <= 50, f"README says {stated} bytes; it is {measured} now"


def test_the_minified_client_is_still_javascript() -> None:
    """terser parsed the whole file: its output keeps every public name the page uses."""
    text = minified(CLIENT).decode()
    for name in ("InngestGateway", "createClient", "configure", "GatewayError", "keepalive"):
        assert name in text, name


def test_the_types_check_the_readme_uses_and_refuse_misuses() -> None:
    """tests/js/usage.ts compiles under `strict` against inngest-gateway.d.ts; its misuses,
    marked @ts-expect-error, must each be an error (else tsc reports the unused marker)."""
    result = subprocess.run(
        [str(tool("tsc")), "-p", str(ROOT / "tests" / "js")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (ROOT / "tests" / "js" / "usage.ts").read_text().count("@ts-expect-error") >= 4
