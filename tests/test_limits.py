"""Rate limits on POST /api and POST /auth/login, on in-memory and on Redis storage."""

from __future__ import annotations

import math
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from inngest_gateway.errors import RateLimited
from inngest_gateway.limits import LocalWindows
from tests.conftest import PASSWORD, assert_envelope
from tests.standin import InngestStandIn

if TYPE_CHECKING:
    import time_machine


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings for the limiter's storage; a fresh key prefix keeps tests apart on Redis."""
    if request.param == "memory":
        return {"INNGEST_GATEWAY_RATELIMIT_STORAGE_URI": "memory://"}
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        pytest.skip("TEST_REDIS_URL is not set: the Redis variant is skipped")
    return {
        "INNGEST_GATEWAY_RATELIMIT_STORAGE_URI": url,
        "INNGEST_GATEWAY_RATELIMIT_KEY_PREFIX": f"test-{uuid.uuid4().hex}",
    }


@pytest.fixture
def limited(make_app: Callable[..., Flask], storage: dict[str, str]) -> Callable[..., Flask]:
    def factory(**overrides: str) -> Flask:
        return make_app(**storage, **overrides)

    return factory


def post(client: FlaskClient, ip: str = "198.51.100.1") -> Any:
    return client.post("/api", json={"data": {}}, environ_base={"REMOTE_ADDR": ip})


def login(client: FlaskClient, email: str, password: str, ip: str = "198.51.100.1") -> Any:
    return client.post(
        "/auth/login",
        json={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": ip},
    )


def assert_limited(response: Any) -> int:
    """A 429 envelope whose message says the Retry-After it sends; returns that."""
    body = assert_envelope(response, 429, "rate_limited")
    retry = int(response.headers["Retry-After"])
    assert f"try again in {retry} s" in body["message"]
    assert 1 <= retry <= 61  # the window, rounded up (tested exactly on a stopped clock)
    return retry


def test_api_posts_are_limited_per_client_ip(
    limited: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = limited(INNGEST_GATEWAY_RATELIMIT_API="3 per minute").test_client()

    assert [post(client).status_code for _ in range(3)] == [200, 200, 200]
    assert_limited(post(client))
    assert len(inngest.accepted) == 3  # the refused post sent nothing
    assert post(client, ip="198.51.100.2").status_code == 200  # another client is not affected


def test_retry_after_is_the_rest_of_the_window(
    limited: Callable[..., Flask],
    storage: dict[str, str],
    stopped_clock: time_machine.Coordinates,
    inngest: InngestStandIn,
) -> None:
    """Retry-After is when a retry gets in, rounded up to a whole second.

    In memory, windows of a minute start on the wall clock's minute, and the clock stands
    17.5 s into one: 42.5 s are left. On Redis a window starts at its first hit, on Redis's
    own clock (which no test stops): a minute less the time the posts took is left.
    """
    client = limited(INNGEST_GATEWAY_RATELIMIT_API="3 per minute").test_client()
    started = time.monotonic()
    assert [post(client).status_code for _ in range(3)] == [200, 200, 200]
    retry = assert_limited(post(client))

    if storage["INNGEST_GATEWAY_RATELIMIT_STORAGE_URI"] != "memory://":
        assert math.ceil(60 - (time.monotonic() - started)) <= retry <= 60
        return
    assert retry == 43
    stopped_clock.shift(42)  # 59.5 s into the minute: the window is still full
    assert assert_limited(post(client)) == 1
    # 0.5 s into the next minute the full one before weighs 59.5/60 of its 3: there is room.
    stopped_clock.shift(1)
    assert post(client).status_code == 200
    assert len(inngest.accepted) == 4


def test_api_posts_are_limited_per_user_not_per_ip(
    limited: Callable[..., Flask], user: Any, inngest: InngestStandIn
) -> None:
    app = limited(INNGEST_GATEWAY_RATELIMIT_API="2 per minute")
    anonymous, ada = app.test_client(), app.test_client()
    assert login(ada, "ada@example.com", PASSWORD).status_code == 200

    assert [post(anonymous).status_code for _ in range(2)] == [200, 200]
    assert_limited(post(anonymous))
    # Ada posts from the same address, but counts against her own user.
    assert [post(ada).status_code for _ in range(2)] == [200, 200]
    assert_limited(post(ada))
    assert post(ada, ip="198.51.100.9").status_code == 429  # a new address does not help her


def test_logins_are_limited_per_client_ip(limited: Callable[..., Flask], user: Any) -> None:
    client = limited(LOGIN_RATELIMIT_IP="3 per minute").test_client()

    statuses = [login(client, f"nobody{n}@example.com", "x").status_code for n in range(3)]

    assert statuses == [401, 401, 401]
    assert_limited(login(client, "ada@example.com", PASSWORD))
    assert login(client, "ada@example.com", PASSWORD, ip="198.51.100.7").status_code == 200


def test_failed_logins_are_limited_per_email(limited: Callable[..., Flask], user: Any) -> None:
    client = limited(LOGIN_RATELIMIT_EMAIL="2 per minute").test_client()

    # Successful logins do not count against the e-mail.
    assert [login(client, "ada@example.com", PASSWORD).status_code for _ in range(3)] == [200] * 3
    assert login(client, "ADA@example.com", "wrong", ip="198.51.100.3").status_code == 401
    assert login(client, "ada@example.com", "wrong", ip="198.51.100.4").status_code == 401

    # Guessing from new addresses does not help, and now even the right password waits.
    assert_limited(login(client, "ada@example.com", "guess", ip="198.51.100.5"))
    assert_limited(login(client, "ada@example.com", PASSWORD, ip="198.51.100.6"))
    assert login(client, "other@example.com", "wrong", ip="198.51.100.6").status_code == 401


def test_form_login_is_limited_too(limited: Callable[..., Flask], user: Any) -> None:
    client = limited(LOGIN_RATELIMIT_EMAIL="1 per minute").test_client()
    form = {"email": "ada@example.com", "password": "wrong"}

    assert client.post("/auth/login", data=form).status_code == 401
    assert_limited(client.post("/auth/login", data=form))


def test_limits_can_be_turned_off(limited: Callable[..., Flask], inngest: InngestStandIn) -> None:
    client = limited(
        INNGEST_GATEWAY_RATELIMIT_ENABLED="false", INNGEST_GATEWAY_RATELIMIT_API="1 per minute"
    ).test_client()

    assert [post(client).status_code for _ in range(3)] == [200, 200, 200]


def test_health_and_pages_are_not_limited(limited: Callable[..., Flask]) -> None:
    client = limited(
        INNGEST_GATEWAY_RATELIMIT_API="1 per minute", LOGIN_RATELIMIT_IP="1 per minute"
    ).test_client()

    assert {client.get("/healthz").status_code for _ in range(5)} == {200}
    assert {client.get("/auth/login").status_code for _ in range(5)} == {200}


# -- abuse must cost the abuser: refused cross-site requests never count ---------------------

OWN_ORIGIN = "http://localhost"  # the test client's host
CROSS_SITE: list[Any] = [
    pytest.param({"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, id="cross"),
    pytest.param({"Origin": "https://evil.example"}, id="foreign-origin"),
    # A sibling subdomain the visitor also uses: same-site, still not this service's pages.
    pytest.param({"Sec-Fetch-Site": "same-site", "Origin": "http://blog.localhost"}, id="sibling"),
]
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin", "Origin": OWN_ORIGIN}


@pytest.mark.parametrize("headers", CROSS_SITE)
def test_cross_site_logins_do_not_lock_the_visitor_out(
    limited: Callable[..., Flask], user: Any, headers: dict[str, str]
) -> None:
    # Another site's page makes the visitor's browser post login attempts, past every limit.
    client = limited(LOGIN_RATELIMIT_IP="3 per minute", LOGIN_RATELIMIT_EMAIL="2 per minute")
    client = client.test_client()
    for _ in range(6):
        refused = client.post(
            "/auth/login",
            json={"email": "ada@example.com", "password": "wrong"},
            headers=headers,
            environ_base={"REMOTE_ADDR": "198.51.100.1"},
        )
        assert_envelope(refused, 403, "cross_site_request")

    # The visitor's own login, from the same address, is neither limited per IP nor per e-mail.
    response = client.post(
        "/auth/login",
        json={"email": "ada@example.com", "password": PASSWORD},
        headers=SAME_ORIGIN,
        environ_base={"REMOTE_ADDR": "198.51.100.1"},
    )
    assert response.status_code == 200, response.get_data(as_text=True)


@pytest.mark.parametrize("headers", CROSS_SITE)
def test_cross_site_posts_do_not_burn_the_anonymous_quota(
    limited: Callable[..., Flask], inngest: InngestStandIn, headers: dict[str, str]
) -> None:
    client = limited(INNGEST_GATEWAY_RATELIMIT_API="3 per minute").test_client()
    for _ in range(6):
        refused = client.post(
            "/api",
            json={"data": {}},
            headers=headers,
            environ_base={"REMOTE_ADDR": "198.51.100.1"},
        )
        assert_envelope(refused, 403, "cross_site_request")

    statuses = [
        client.post(
            "/api",
            json={"data": {}},
            headers=SAME_ORIGIN,
            environ_base={"REMOTE_ADDR": "198.51.100.1"},
        ).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 200]  # the whole quota is still the visitor's
    assert len(inngest.accepted) == 3


@pytest.mark.parametrize("headers", CROSS_SITE)
def test_cross_site_posts_do_not_burn_a_users_quota(
    limited: Callable[..., Flask], user: Any, inngest: InngestStandIn, headers: dict[str, str]
) -> None:
    client = limited(INNGEST_GATEWAY_RATELIMIT_API="2 per minute").test_client()
    assert login(client, "ada@example.com", PASSWORD).status_code == 200
    for _ in range(5):
        refused = client.post("/api", json={"data": {}}, headers=headers)
        assert_envelope(refused, 403, "cross_site_request")

    statuses = [
        client.post("/api", json={"data": {}}, headers=SAME_ORIGIN).status_code for _ in range(2)
    ]
    assert statuses == [200, 200]
    assert_limited(client.post("/api", json={"data": {}}, headers=SAME_ORIGIN))  # still limited


# -- the limiter itself: the in-process counters decide as the library's, exactly -------------


def test_local_windows_decide_as_the_librarys_memory_storage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hit for hit, on one clock, across window boundaries: same answers, same window stats."""
    clock = [1_700_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    ours = SlidingWindowCounterRateLimiter(LocalWindows())
    library = MemoryStorage()
    theirs = SlidingWindowCounterRateLimiter(library)
    rng = random.Random(20261202)
    try:
        for rate in ("5 per 10 seconds", "3 per minute", "40 per second"):
            item = parse(rate)
            for step in range(600):
                clock[0] += rng.choice([0.01, 0.2, 0.9, 2.5, 7.0, 31.0])
                key = rng.choice(["user:1", "user:2", "ip:198.51.100.1"])
                where = f"{rate}, step {step}"
                assert ours.test(item, "api", key) == theirs.test(item, "api", key), where
                assert ours.hit(item, "api", key) == theirs.hit(item, "api", key), where
                assert ours.get_window_stats(item, "api", key) == theirs.get_window_stats(
                    item, "api", key
                ), where
    finally:
        library.timer.cancel()


def test_local_windows_forget_ended_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counters of many clients go once their windows end: memory stays bounded."""
    clock = [1_700_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    windows = LocalWindows()
    limiter = SlidingWindowCounterRateLimiter(windows)
    item = parse("10 per minute")
    for n in range(5000):
        assert limiter.hit(item, "api", f"ip:{n}")
    assert len(windows._counts) == 5000

    clock[0] += 2 * 60 + LocalWindows.PRUNE_SECONDS  # two windows later: all ended
    assert limiter.hit(item, "api", "ip:new")

    assert len(windows._counts) == 1


def test_concurrent_hits_are_admitted_exactly_up_to_the_limit(storage: dict[str, str]) -> None:
    """16 threads racing for 100 hits of one key: exactly 100 admitted, in memory and on Redis."""
    from inngest_gateway.limits import RateLimiter
    from inngest_gateway.settings import load_settings

    settings = load_settings({"INNGEST_DEV": "1", "SECRET_KEY": "x" * 32, **storage})
    limiter = RateLimiter(settings)
    admitted = []
    barrier = threading.Barrier(16)

    def racer() -> None:
        barrier.wait()
        for _ in range(40):
            try:
                limiter.hit("100 per minute", "api", "user:racer")
                admitted.append(1)
            except RateLimited:
                pass

    threads = [threading.Thread(target=racer) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(admitted) == 100
