"""Prometheus metrics at `GET /metrics`: counters move with what the service does, the scrape
can be restricted, and under gunicorn with 2 workers the counters add up across workers.

Without PROMETHEUS_MULTIPROC_DIR the values live in the test process for all apps, so the
tests compare a scrape before and after.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import string
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from inngest_gateway.state import gateway_state
from service.metrics import internal_address
from tests.conftest import assert_envelope
from tests.processes import ROOT, start_gunicorn
from tests.standin import InngestStandIn

ACCEPTED = "inngest_gateway_events_accepted_total"
REFUSED = "inngest_gateway_events_refused_total"
DELIVERED = "inngest_gateway_events_delivered_total"
RETRIED = "inngest_gateway_events_retried_total"
DEAD = "inngest_gateway_events_dead_lettered_total"
UPSTREAM = "inngest_gateway_upstream_responses_total"
HTTP = "inngest_gateway_http_requests_total"
OUTBOX = {
    "INNGEST_GATEWAY_DELIVERY_MODE": "outbox",
    "INNGEST_GATEWAY_OUTBOX_RETRY_BASE": "50ms",
    "INNGEST_GATEWAY_OUTBOX_RETRY_MAX": "200ms",
    "INNGEST_GATEWAY_SEND_TIMEOUT": "1",
}


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by its name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return parse(response.get_data(as_text=True))


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Delta:
    """What a block of actions added to the counters."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.before = scrape(client)

    def __call__(self, name: str, **labels: str) -> float:
        return value(scrape(self.client), name, **labels) - value(self.before, name, **labels)


def run_once(app: Flask) -> int:
    with app.app_context():
        return gateway_state(app).deliverer.run_once()


def test_sync_posts_count_as_accepted_and_delivered(app: Flask, inngest: InngestStandIn) -> None:
    client = app.test_client()
    delta = Delta(client)

    assert client.post("/api", json=[{"data": {"i": i}} for i in range(3)]).status_code == 200
    inngest.fail_next(1, 500)
    assert client.post("/api", json={}).status_code == 200  # one retry, then delivered

    assert delta(ACCEPTED) == 4
    assert delta(DELIVERED) == 4
    assert delta(RETRIED) == 1
    assert delta(UPSTREAM, status="200") == 2
    assert delta(UPSTREAM, status="500") == 1
    assert delta(HTTP, route="/api", method="POST", status="200") == 2
    samples = scrape(client)
    assert value(samples, "inngest_gateway_upstream_request_duration_seconds_count") >= 3
    assert (
        value(
            samples,
            "inngest_gateway_http_request_duration_seconds_count",
            route="/api",
            method="POST",
        )
        >= 2
    )


def test_unreachable_inngest_is_a_connection_error_and_a_refusal(
    app: Flask, inngest: InngestStandIn
) -> None:
    client = app.test_client()
    delta = Delta(client)
    inngest.stop()

    assert_envelope(client.post("/api", json={}), 503, "upstream_unavailable")

    assert delta(UPSTREAM, status="connection_error") >= 1
    assert delta(REFUSED, reason="upstream_unavailable") == 1
    assert delta(ACCEPTED) == 0


def test_refusals_are_counted_by_reason(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_app(
        **OUTBOX,
        INNGEST_GATEWAY_OUTBOX_MAX_PENDING="1",
        INNGEST_GATEWAY_RATELIMIT_API="4 per minute",
    )
    client = app.test_client()
    delta = Delta(client)

    assert_envelope(client.post("/api", json={"name": "evil/x"}), 403, "event_not_allowed")
    assert_envelope(client.post("/api", json={"ts": "soon"}), 422, "validation_failed")
    assert client.post("/api", json={}).status_code == 202
    assert_envelope(client.post("/api", json={}), 503, "outbox_full")
    assert_envelope(client.post("/api", json={}), 429, "rate_limited")

    assert delta(REFUSED, reason="event_not_allowed") == 1
    assert delta(REFUSED, reason="validation_failed") == 1
    assert delta(REFUSED, reason="outbox_full") == 1
    assert delta(REFUSED, reason="rate_limited") == 1
    assert delta(ACCEPTED) == 1
    assert delta(HTTP, route="/api", method="POST", status="429") == 1


def test_outbox_deliveries_retries_and_dead_letters(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_app(**OUTBOX)
    client = app.test_client()
    delta = Delta(client)

    assert client.post("/api", json=[{}, {}]).status_code == 202
    samples = scrape(client)
    assert value(samples, "inngest_gateway_outbox_pending_events") == 2
    assert value(samples, "inngest_gateway_outbox_oldest_pending_age_seconds") >= 0
    assert delta(DELIVERED) == 0

    inngest.fail_next(1, 503)
    assert run_once(app) == 2  # refused for now: both retried later
    assert delta(RETRIED) == 2
    time.sleep(0.25)
    assert run_once(app) == 2
    assert delta(DELIVERED) == 2

    inngest.fail_next(1, 403, body={"status": 403, "error": "no"})
    assert client.post("/api", json={}).status_code == 202
    assert run_once(app) == 1
    assert delta(DEAD) == 1
    assert delta(ACCEPTED) == 3
    assert delta(UPSTREAM, status="503") == 1
    assert delta(UPSTREAM, status="403") == 1
    samples = scrape(client)
    assert value(samples, "inngest_gateway_outbox_pending_events") == 0
    assert value(samples, "inngest_gateway_outbox_dead_events") == 1
    assert value(samples, "inngest_gateway_outbox_oldest_pending_age_seconds") == 0


def test_requests_are_counted_by_route_not_path(app: Flask) -> None:
    client = app.test_client()
    delta = Delta(client)

    assert client.get("/no/such/page").status_code == 404
    assert client.get("/healthz").status_code == 200

    assert delta(HTTP, route="<unmatched>", method="GET", status="404") == 1
    assert delta(HTTP, route="/healthz", method="GET", status="200") == 1


def http_series(client: FlaskClient) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every label set of the per-request metrics (histogram buckets left out)."""
    return {
        (name, labels)
        for name, labels in scrape(client)
        if name.startswith(("inngest_gateway_http_", "inngest_gateway_events_refused"))
        and not name.endswith("_bucket")
    }


def test_made_up_methods_and_paths_add_no_series(app: Flask) -> None:
    client = app.test_client()
    rng = random.Random(20261128)

    def token(size: int) -> str:
        return "".join(rng.choice(string.ascii_uppercase) for _ in range(size))

    # One of each kind first: a made-up method on a route, and on no route.
    assert client.open("/api", method="FROBNICATE").status_code == 405
    assert client.open("/no/such/page", method="FROBNICATE").status_code == 404
    assert client.open("/also/not/here", method="GET").status_code == 404
    assert client.post("/api", json={"name": "evil/x"}).status_code == 403
    before = http_series(client)

    statuses = set()
    for n in range(50):
        method = token(rng.randint(3, 12))
        path = f"/{token(6).lower()}/{n}" if n % 2 else "/api"
        statuses.add(client.open(path, method=method).status_code)
        statuses.add(client.open(f"/{token(8)}", method="GET").status_code)
    assert statuses == {404, 405}

    after = http_series(client)
    assert after - before == set(), sorted(after - before)
    samples = scrape(client)
    assert value(samples, HTTP, route="<unmatched>", method="other", status="405") >= 26
    assert value(samples, HTTP, route="<unmatched>", method="other", status="404") >= 26


def test_unknown_upstream_statuses_add_no_series(app: Flask, inngest: InngestStandIn) -> None:
    client = app.test_client()
    inngest.fail_next(1, 499)
    assert_envelope(client.post("/api", json={}), 502, "upstream_rejected")
    before = {labels for name, labels in scrape(client) if name == UPSTREAM}
    delta = Delta(client)

    made_up = [440, 450, 460, 470, 480, 490, 494, 497]
    for status in made_up:
        inngest.fail_next(1, status)
        assert_envelope(client.post("/api", json={}), 502, "upstream_rejected")

    after = {labels for name, labels in scrape(client) if name == UPSTREAM}
    assert after == before, sorted(after - before)
    assert delta(UPSTREAM, status="4xx") == len(made_up)
    assert delta(UPSTREAM, status="440") == 0


def test_token_restricts_the_scrape(make_app: Callable[..., Flask]) -> None:
    client = make_app(METRICS_TOKEN="s3cret-metrics-token").test_client()

    assert_envelope(client.get("/metrics"), 401, "unauthorized")
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert_envelope(wrong, 401, "unauthorized")
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    right = client.get("/metrics", headers={"Authorization": "Bearer s3cret-metrics-token"})
    assert right.status_code == 200
    assert b"inngest_gateway_http_requests_total" in right.data


def test_internal_only_refuses_public_addresses(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()  # METRICS_INTERNAL_ONLY defaults to true

    public = client.get("/metrics", environ_base={"REMOTE_ADDR": "8.8.4.4"})
    assert_envelope(public, 403, "forbidden")
    private = client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert private.status_code == 200

    open_client = make_app(METRICS_INTERNAL_ONLY="false").test_client()
    assert open_client.get("/metrics", environ_base={"REMOTE_ADDR": "8.8.4.4"}).status_code == (200)


def test_internal_addresses() -> None:
    assert all(
        internal_address(a)
        for a in ("127.0.0.1", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "fd00::1")
    )
    assert not any(
        internal_address(a) for a in ("8.8.4.4", "8.8.8.8", "2001:4860::1", None, "junk")
    )
    assert internal_address("::ffff:10.0.0.1") and not internal_address("::ffff:8.8.8.8")


def test_scrape_is_not_rate_limited(make_app: Callable[..., Flask]) -> None:
    client = make_app(INNGEST_GATEWAY_RATELIMIT_API="1 per minute").test_client()

    assert all(client.get("/metrics").status_code == 200 for _ in range(5))


def _gunicorn_conf() -> Any:
    spec = importlib.util.spec_from_file_location("gunicorn_conf", ROOT / "gunicorn.conf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gunicorn_makes_and_removes_a_metrics_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("INNGEST_DEV", "1")
    # on_starting sets these in os.environ; setting them here first makes monkeypatch put
    # back what was there before, so no later test or subprocess inherits a removed directory.
    for name in ("PROMETHEUS_MULTIPROC_DIR", "INNGEST_GATEWAY_CREATED_METRICS_DIR"):
        monkeypatch.setenv(name, "unset by the test")
        monkeypatch.delenv(name)
    conf = _gunicorn_conf()

    conf.on_starting(None)
    made = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    assert made.is_dir() and list(made.iterdir()) == []
    conf.on_exit(None)
    assert not made.exists()

    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_12345.db").write_bytes(b"stale")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(given))
    monkeypatch.delenv("INNGEST_GATEWAY_CREATED_METRICS_DIR")
    conf.on_starting(None)
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(given)
    assert list(given.iterdir()) == []  # last run's values are gone
    conf.on_exit(None)
    assert given.is_dir()  # the operator's directory stays


def accepted_by_pid(directory: Path) -> dict[int, float]:
    """Each worker's own count of accepted events, read from its file."""
    counts: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for key, count, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[1] == ACCEPTED:
                counts[pid] = counts.get(pid, 0.0) + count
    return counts


@pytest.mark.slow
# Above the test's own waits: gunicorn's start (30 s), the rounds (60 s, and 15 s for the last),
# delivery (20 s), the scrapes (10 s each) and the kill (10 s).
@pytest.mark.timeout(240)
def test_counters_add_up_across_gunicorn_workers(tmp_path: Path, inngest: InngestStandIn) -> None:
    metrics_dir = tmp_path / "prometheus"
    server = start_gunicorn(
        tmp_path,
        inngest,
        env={
            "INNGEST_GATEWAY_DELIVERY_MODE": "outbox",
            "INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": "true",
            "INNGEST_GATEWAY_OUTBOX_POLL_SECONDS": "0.1",
            "INNGEST_GATEWAY_RATELIMIT_ENABLED": "false",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        },
    )
    threads, posted = 6, 0
    errors: list[str] = []

    def client(number: int) -> None:
        try:
            response = requests.post(
                f"{server.url}/api",
                json=[{"name": "app/m", "data": {"c": number}}, {"name": "app/m"}],
                headers={"Connection": "close"},  # a new connection: either worker may take it
                timeout=10,
            )
        except requests.RequestException as exc:
            errors.append(repr(exc))
            return
        if response.status_code != 202:
            errors.append(response.text)

    try:
        # Rounds of concurrent posts until both workers have served some (the kernel decides),
        # for at most a minute.
        rounds_until = time.monotonic() + 60
        by_pid: dict[int, float] = {}
        while time.monotonic() < rounds_until:
            workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
            for worker in workers:
                worker.start()
            round_until = time.monotonic() + 15  # for the whole round, not 15 s per post
            for worker in workers:
                worker.join(timeout=max(0.0, round_until - time.monotonic()))
            assert not any(worker.is_alive() for worker in workers), "a post took over 15 s"
            posted += threads
            assert errors == []
            by_pid = accepted_by_pid(metrics_dir)
            if posted >= 30 and len([c for c in by_pid.values() if c > 0]) == 2:
                break
        events = posted * 2
        assert len([pid for pid, count in by_pid.items() if count > 0]) == 2, by_pid
        assert sum(by_pid.values()) == events

        deadline = time.monotonic() + 20
        while len(inngest.accepted) < events and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(inngest.accepted) == events

        samples: dict[Any, float] = {}
        for _ in range(4):  # whichever worker answers, the sums are the same
            response = requests.get(
                f"{server.url}/metrics", headers={"Connection": "close"}, timeout=10
            )
            assert response.status_code == 200, response.text
            samples = parse(response.text)
            assert value(samples, ACCEPTED) == events
        deadline = time.monotonic() + 10
        while value(samples, DELIVERED) < events and time.monotonic() < deadline:
            time.sleep(0.1)
            samples = parse(requests.get(f"{server.url}/metrics", timeout=10).text)
        assert value(samples, DELIVERED) == events
        assert value(samples, HTTP, route="/api", method="POST", status="202") == posted
        assert value(samples, "inngest_gateway_outbox_pending_events") == 0
    finally:
        server.kill()
    assert "Traceback" not in server.output()
