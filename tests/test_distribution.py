"""The distribution: it requires what the extension imports, at bounds a host can meet.

The wheel holds `inngest_gateway` alone; its requirements are the third-party packages that
package imports, each with the lower bound that requirements-lowest.txt pins and `make test`
runs the extension's tests at (tests/extension, against the installed wheel). Installed into
a host already pinned at those versions, it installs nothing else and changes no pin.
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest

from tests.extension.test_extension import SECRET, only_event, readme_example
from tests.packaging import build_wheel, pip, run_example
from tests.standin import InngestStandIn

ROOT = Path(__file__).resolve().parent.parent
LOWEST = ROOT / "requirements-lowest.txt"
# The standalone service's own dependencies (requirements.txt): never the extension's.
SERVICE_ONLY = ("flask_sqlalchemy", "gunicorn", "apispec", "psycopg", "dotenv")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, str]:
    """setup.cfg's install_requires: each canonical name and its lower bound."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    bounds = {}
    for line in config["options"]["install_requires"].splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9A-Za-z.]*)", requirement)
            assert match, f"not `Name>=lower`: {requirement}"
            bounds[canonical(match[1])] = match[2]
    return bounds


def extras() -> dict[str, list[str]]:
    """setup.cfg's extras_require: each extra and its requirements."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    section = config["options.extras_require"]
    return {name: [r.strip() for r in section[name].splitlines() if r.strip()] for name in section}


def imported_distributions() -> set[str]:
    """The distributions whose modules `inngest_gateway` imports, at any level."""
    stdlib = set(sys.stdlib_module_names)
    modules: set[str] = set()
    for path in (ROOT / "inngest_gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    owners = importlib.metadata.packages_distributions()
    third_party = modules - stdlib - {"__future__", "inngest_gateway"}
    unknown = {module for module in third_party if module not in owners}
    assert not unknown, f"imported, but no installed distribution provides it: {unknown}"
    return {canonical(owners[module][0]) for module in third_party}


def lowest_pins() -> dict[str, str]:
    """requirements-lowest.txt: each canonical name and its exact version."""
    pins = {}
    for line in LOWEST.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            name, version = requirement.split("==")
            pins[canonical(name)] = version
    return pins


def test_the_requirements_are_what_the_extension_imports() -> None:
    assert set(declared()) == imported_distributions()


def test_the_service_dependencies_are_not_the_distributions() -> None:
    required = set(declared()) | {
        canonical(re.split(r"[\[<>=]", r)[0]) for reqs in extras().values() for r in reqs
    }
    for name in ("flask-sqlalchemy", "gunicorn", "apispec", "python-dotenv"):
        assert name not in required
    assert extras().keys() >= {"postgres", "redis"}


def test_the_lowest_pins_are_the_lower_bounds() -> None:
    pins = lowest_pins()
    assert {name: pins.get(name) for name in declared()} == declared()
    assert (pins["flask"], pins["werkzeug"], pins["flask-login"]) == ("3.0.0", "3.0.0", "0.6.3")


IMPORTS = f"""
import importlib.util, json, sys
import inngest_gateway
print(json.dumps({{
    "file": inngest_gateway.__file__,
    "loaded": sorted(set({SERVICE_ONLY!r}) & set(sys.modules)),
    "service": importlib.util.find_spec("service") and importlib.util.find_spec("service").origin,
}}))
"""


def imports(python: Path, cwd: Path) -> dict[str, Any]:
    """What `import inngest_gateway` brings along, run by `python` in `cwd`."""
    run = subprocess.run(
        [str(python), "-c", IMPORTS], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    found: dict[str, Any] = json.loads(run.stdout)
    return found


def test_importing_the_extension_loads_none_of_the_services_dependencies() -> None:
    # Here every one of them is installed (the service needs them), so an import would show.
    for module in SERVICE_ONLY:
        assert importlib.util.find_spec(module) is not None, module
    found = imports(Path(sys.executable), ROOT)
    assert found["file"] == str(ROOT / "inngest_gateway" / "__init__.py")
    assert found["loaded"] == []


@pytest.mark.slow
@pytest.mark.timeout(900)  # a fresh environment, two installs from the index, the tests
def test_the_wheel_fits_a_host_pinned_at_the_lowest_versions(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    env = tmp_path / "host-venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    pip(python, "install", "--quiet", "-r", str(LOWEST))
    before = set(pip(python, "freeze").splitlines())
    assert "Flask==3.0.0" in before and "Werkzeug==3.0.0" in before

    pip(python, "install", str(wheel))

    after = set(pip(python, "freeze").splitlines())
    assert before - after == set()  # no pin changed
    added = [canonical(re.split(r"==| @ ", line)[0]) for line in after - before]
    assert added == ["inngest-gateway"]  # nothing beyond the requirements, all pinned already

    # Imported as a host does, from outside the checkout: the service's dependencies are not
    # installed, so importing one would fail here.
    outside = tmp_path / "host"
    outside.mkdir()
    found = imports(python, outside)
    assert found["file"].startswith(str(env)), found
    assert found["service"] is None

    # The extension's tests, against the installed wheel (the checkout only for tests/).
    site = next((env / "lib").glob("python*/site-packages"))
    (site / "zz-checkout-tests.pth").write_text(f"{ROOT}\n")
    tests = subprocess.run(
        [str(env / "bin" / "pytest"), "-c", "tests/extension/lowest.ini", "tests/extension"],
        cwd=ROOT,
        env={**os.environ, "TEST_AGAINST_WHEEL": "1"},  # refuses the checkout's package
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr
    assert re.search(r"\b\d+ passed\b", tests.stdout)


# -- installed with pip, as `inngest_gateway`; the README's example --------------------------

AFTER_EXAMPLE = """
import importlib.util
import json
client = app.test_client()
with client.session_transaction() as session:
    session["_user_id"] = "1"
answer = client.post("/api", json={"name": "app/readme.tried", "data": {"n": 1}})
drained = gateway.stop(app)
import inngest_gateway
print(json.dumps({
    "status": answer.status_code,
    "ids": answer.get_json()["ids"],
    "drained": drained,
    "module": inngest_gateway.__file__,
    "service": importlib.util.find_spec("service") is not None,
}))
"""


@pytest.mark.slow
@pytest.mark.timeout(180)  # above pip's build (120 s) and the example's run (30 s)
def test_pip_installs_inngest_gateway_and_the_readme_example_runs(
    tmp_path: Path, inngest: InngestStandIn
) -> None:
    target = tmp_path / "site"
    pip(Path(sys.executable), "install", "--quiet", "--no-deps", "--no-index",
        "--target", str(target), str(build_wheel(tmp_path)))  # fmt: skip
    installed = target / "inngest_gateway"
    assert (installed / "extension.py").is_file()
    assert (installed / "outbox" / "deliverer.py").is_file()
    assert sorted(path.name for path in target.iterdir() if not path.name.endswith("-info")) == [
        "inngest_gateway"
    ]  # not the standalone service, nor its templates
    for name in ("inngest-gateway.js", "inngest-gateway.mjs", "inngest-gateway.d.ts"):
        assert (installed / "js" / name).is_file(), name

    workdir = tmp_path / "host"
    workdir.mkdir()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(target),
        "SECRET_KEY": SECRET,
        "INNGEST_EVENT_KEY": inngest.event_key,
        "INNGEST_BASE_URL": inngest.url,
        "INNGEST_GATEWAY_OUTBOX_POLL_SECONDS": "0.05",
    }
    code = readme_example() + AFTER_EXAMPLE
    result = run_example(sys.executable, code, cwd=workdir, env=env, timeout=30)

    assert result["module"].startswith(str(installed))  # not the checkout's
    assert result["service"] is False  # the standalone service is not in the distribution
    assert result["status"] == 202
    event = only_event(inngest)  # delivered by the time stop() returned
    assert event["id"] == result["ids"][0]
    assert event["data"]["user"] == {"id": "1", "email": "ada@example.com", "name": "Ada Lovelace"}
    assert (workdir / "instance" / "inngest-gateway-outbox.db").is_file()
