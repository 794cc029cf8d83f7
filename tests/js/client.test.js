// Unit tests of inngest-gateway.js, run in Chromium by tests/test_client_units.py.
//
// The network is the page's own `fetch`, replaced by `network(...)` with answers given in
// turn; the client is the real file, loaded as the ES module the service serves. Every test
// uses an endpoint of its own (one client and queue each) and starts with empty storage.
import gateway, { backoff, createClient, GatewayError } from "/inngest-gateway.mjs";

const tests = new Map();
const test = (name, body) => tests.set(name, body);

class Failure extends Error {}
const check = (ok, message) => {
  if (!ok) throw new Failure(message);
};
const same = (actual, expected, what = "value") => {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  check(a === e, `${what}: got ${a}, expected ${e}`);
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const within = async (ms, condition, what) => {
  for (const end = performance.now() + ms; performance.now() < end; await sleep(5)) {
    if (condition()) return;
  }
  check(condition(), `not within ${ms} ms: ${what}`);
};
const rejection = (promise) =>
  promise.then(
    (value) => {
      throw new Failure(`resolved to ${JSON.stringify(value)}, expected a rejection`);
    },
    (error) => error,
  );

let endpoints = 0;
// A fresh client: retries fast unless a test says otherwise.
const client = (options = {}) => createClient({ endpoint: `/t/${++endpoints}`, base: 10, cap: 40, ...options });

// What the service answers when it accepts a body: one id per event, derived from its own.
const accepted = (body) => [202, { status: "ok", ids: [].concat(body).map((event) => `id-of-${event.id}`) }];
const envelope = (status, code, errors = {}) => [status, { status: "error", code, message: `Refused: ${code}.`, errors, request_id: "r-1" }];

// Replace the page's fetch: each request gets the next answer (the last one repeats), an
// answer being [status, body, headers], "offline" (a network error) or a function of the
// posted body returning one. Returns the requests seen, in order.
let answers = [];
const network = (...given) => {
  answers = given;
  const seen = [];
  window.fetch = async (url, init) => {
    const body = JSON.parse(init.body);
    seen.push({ url: String(url), body, keepalive: init.keepalive, credentials: init.credentials, at: performance.now() });
    let answer = answers.length > 1 ? answers.shift() : answers[0];
    if (typeof answer === "function") answer = await answer(body);
    if (answer === "offline") throw new TypeError("Failed to fetch");
    const [status, payload, headers] = answer;
    return new Response(payload === undefined ? "<html>proxy page</html>" : JSON.stringify(payload), { status, headers });
  };
  return seen;
};
const events = (seen) => seen.map((request) => [].concat(request.body));
const names = (seen) => events(seen).map((batch) => batch.map((event) => event.name));

// -- backoff -------------------------------------------------------------------------------

test("backoff doubles from base to cap, keeps half of each delay fixed and half random", async () => {
  const low = [0, 1, 2, 3, 4, 5].map((attempt) => backoff(attempt, 0, { base: 100, cap: 1000 }, () => 0));
  const high = [0, 1, 2, 3, 4, 5].map((attempt) => backoff(attempt, 0, { base: 100, cap: 1000 }, () => 0.999999));
  same(low, [50, 100, 200, 400, 500, 500], "delays with random() = 0");
  same(high.map(Math.round), [100, 200, 400, 800, 1000, 1000], "delays with random() near 1");
  for (let i = 0; i < 200; i++) {
    const delay = backoff(3, 0, { base: 100, cap: 1000 });
    check(delay >= 400 && delay <= 800, `backoff(3) = ${delay}, outside [400, 800]`);
  }
});

test("backoff never undercuts the server's Retry-After", async () => {
  same(backoff(0, 5000, { base: 100, cap: 1000 }, () => 0.5), 5000, "under Retry-After");
  same(backoff(4, 100, { base: 100, cap: 1000 }, () => 0), 500, "over Retry-After");
});

// -- sending -------------------------------------------------------------------------------

test("send resolves to the ids the service answered, in the events' order", async () => {
  const seen = network(accepted);
  const ids = await client().send([{ name: "app/a", data: { n: 1 } }, { name: "app/b" }, { name: "app/c" }]);
  same(names(seen), [["app/a", "app/b", "app/c"]], "one request, in order");
  same(ids, seen[0].body.map((event) => `id-of-${event.id}`), "ids");
});

test("each event gets a client id and a time once; an id of the caller's is kept", async () => {
  const seen = network(accepted);
  const before = Date.now();
  const ids = await client().send("app/one", { a: 1 }, { id: "order-17" });
  const [event] = events(seen)[0];
  same(event.id, "order-17", "the caller's id");
  same(ids, ["id-of-order-17"], "ids");
  check(event.ts >= before && event.ts <= Date.now(), `ts ${event.ts} is the time of send()`);
  same(event.data, { a: 1 }, "data");

  const seen2 = network(accepted);
  await client().send("app/two");
  const [made] = events(seen2)[0];
  check(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(made.id), `uuid ${made.id}`);
});

test("one event goes as an object, several as an array", async () => {
  const seen = network(accepted);
  const gw = client();
  await gw.send("app/single", {});
  await gw.send([{ name: "app/x" }, { name: "app/y" }]);
  check(!Array.isArray(seen[0].body) && seen[0].body.name === "app/single", JSON.stringify(seen[0].body));
  check(Array.isArray(seen[1].body) && seen[1].body.length === 2, JSON.stringify(seen[1].body));
});

test("503, a network error and 429 are retried with the same ids until accepted", async () => {
  const seen = network(envelope(503, "outbox_unavailable"), "offline", envelope(429, "rate_limited"), accepted);
  const ids = await client().send([{ name: "app/a" }, { name: "app/b" }]);
  same(seen.length, 4, "requests");
  const first = JSON.stringify(seen[0].body);
  for (const request of seen) same(JSON.stringify(request.body), first, "the same body on every try");
  same(ids, seen[0].body.map((event) => `id-of-${event.id}`), "ids");
  same(client().pending(), 0, "nothing left queued");
});

test("Retry-After is honoured: the next try waits at least that long", async () => {
  const seen = network([503, { status: "error", code: "outbox_full", errors: {} }, { "Retry-After": "1" }], accepted);
  await client().send("app/later");
  same(seen.length, 2, "requests");
  const waited = seen[1].at - seen[0].at;
  check(waited >= 990, `retried after ${waited} ms, before Retry-After: 1`);
  check(waited < 5000, `retried after ${waited} ms, long after Retry-After: 1`);
});

test("a proxy's 502 or 504 page is retried; the service's own 502 envelope is final", async () => {
  const seen = network([502], [504], accepted);
  same((await client().send("app/deploy")).length, 1, "accepted after the proxy's errors");
  same(seen.length, 3, "requests");

  const seen2 = network(envelope(502, "upstream_rejected"));
  const gw = client();
  const error = await rejection(gw.send("app/refused"));
  same([error.status, error.code], [502, "upstream_rejected"], "the envelope");
  await sleep(100);
  same(seen2.length, 1, "not retried");
  same(gw.pending(), 0, "not kept");
});

test("another 4xx is not retried: the promise rejects with the envelope's code and field errors", async () => {
  const errors = { data: { email: ["Not a valid email address."] } };
  const seen = network(envelope(422, "validation_failed", errors));
  const gw = client();
  const error = await rejection(gw.send("app/signup", { email: "nope" }, { id: "k-1" }));
  check(error instanceof GatewayError && error instanceof Error, "a GatewayError");
  same([error.name, error.status, error.code, error.message, error.requestId], ["GatewayError", 422, "validation_failed", "Refused: validation_failed.", "r-1"], "error");
  same(error.errors, errors, "field errors");
  same(error.events.map((event) => [event.name, event.id]), [["app/signup", "k-1"]], "the events refused");
  same(error.queued, false, "queued");
  await sleep(100);
  same(seen.length, 1, "requests");
  same(gw.pending(), 0, "a refused event is not kept");
});

test("a 2xx that is not the service's answer (a captive portal, say) is retried", async () => {
  const seen = network([200, { welcome: "to the hotel wifi" }], [200], accepted);
  same((await client().send("app/portal")).length, 1, "ids");
  same(seen.length, 3, "requests");
});

// The clock as the client reads it: each Date.now() gives the next of `readings`, then
// counts up by one a read from `from`: two reads in a row can fall either side of a deadline.
// `clock.reads` counts them, so that a test can check it met the deadline where it meant to
// (a change in how often the client reads the clock must make it fail, not pass unaimed).
const realNow = Date.now;
const clock = { reads: 0 };
const scriptClock = (readings, from) => {
  clock.reads = 0;
  Date.now = () => (clock.reads++, readings.length ? readings.shift() : from++);
};
// The service's acceptance, noting how many times the clock had been read by then.
const acceptedAt = (reads) => (body) => ((reads.push(clock.reads), accepted(body)));
const outboxFull = (seconds) => [503, { status: "error", code: "outbox_full", errors: {} }, { "Retry-After": String(seconds) }];

test("a retry whose time comes between two readings of the clock is still made", async () => {
  // The 503 asks for 1 s: notBefore is S + 1000, and the timer is set for 1000 ms. When it
  // fires, the clock reads S + 999 (not yet), then S + 1000 (due): the retry must not be lost.
  const start = realNow();
  const reads = [];
  network(() => (scriptClock([start, start], start + 999), outboxFull(1)), acceptedAt(reads));
  let ids = null;
  client().send("app/tick").then((given) => (ids = given), () => {});
  await within(5000, () => ids !== null, "the retry after Retry-After");
  same(ids.length, 1, "ids");
  // notBefore (S), the timer's delay (S), then S + 999 (not yet), S + 1000 (due), S + 1001.
  same(reads, [5], "reads of the clock before the retry");
});

test("a send while a Retry-After holds the queue past its budget goes when the time comes", async () => {
  // The first send gives up at its 100 ms budget; the queue waits for the server's 1 s. A
  // second send reads the clock at S + 999 (not yet), then S + 1000 (due): it must go.
  const start = realNow();
  const reads = [];
  network(() => (scriptClock([start, start], start), outboxFull(1)), acceptedAt(reads));
  const gw = client({ budget: 100 });
  const first = gw.send("app/1");
  same((await rejection(first)).code, "timeout", "the first send's budget");
  // The send reads the clock for its event's ts, its key and its budget, then asks whether
  // the Retry-After has passed, then how long to wait.
  scriptClock([], start + 996);
  let ids = null;
  gw.send("app/2").then((given) => (ids = given), () => {});
  await within(3000, () => ids !== null, "the second send");
  same(gw.pending(), 0, "queued");
  same(reads, [6], "reads of the clock, S + 996 to S + 1001, before the second send went");
});

test("a delay option that is not a positive number is the default's, not a retry without pause", async () => {
  // data-base="" is Number("") = 0: a backoff of 0 ms would post again at once, all budget long.
  const seen = network([500]);
  for (const options of [{ base: 0, cap: 30000 }, { base: -5, cap: 0 }, { base: NaN, cap: 30000 }]) {
    const gw = client({ ...options, budget: 300 });
    same((await rejection(gw.send("app/storm"))).code, "timeout", "the send's budget");
  }
  check(seen.length <= 6, `${seen.length} requests in three budgets of 300 ms`);
});

test("a Retry-After longer than the budget holds later sends too (no request storm)", async () => {
  const seen = network([503, { status: "error", code: "outbox_full", errors: {} }, { "Retry-After": "120" }]);
  const gw = client({ budget: 100 });
  gw.send("app/1").catch(() => {});
  await within(3000, () => seen.length === 1, "the first try");
  for (const n of [2, 3, 4, 5]) {
    gw.send(`app/${n}`).catch(() => {});
    await sleep(20);
  }
  same(seen.length, 1, "requests before Retry-After");
  same(gw.pending(), 5, "queued");
  network(accepted);
  await gw.flush(); // an explicit flush tries now, whatever the backoff says
  same(gw.pending(), 0, "sent by flush()");
});

test("going online retries at once after lost connections, not before a server's Retry-After", async () => {
  let seen = network("offline");
  const gw = client({ base: 60000, cap: 60000 });
  const first = gw.send("app/net");
  await within(3000, () => seen.length === 1, "the first try");
  seen = network(accepted);
  window.dispatchEvent(new Event("online"));
  same((await first).length, 1, "sent when online");
  seen = network([503, { status: "error", code: "outbox_full", errors: {} }, { "Retry-After": "60" }]);
  gw.send("app/server").catch(() => {});
  await within(3000, () => seen.length === 1, "the first try");
  const again = network(accepted);
  window.dispatchEvent(new Event("online"));
  await sleep(50);
  same(again.length, 0, "the server asked for 60 s");
});

test("any 5xx page that is not the service's envelope is retried; the service's 500 is final", async () => {
  const seen = network([500], [520], [503], accepted);
  same((await client().send("app/cdn")).length, 1, "ids");
  same(seen.length, 4, "requests");
  network(envelope(500, "internal_error"));
  same((await rejection(client().send("app/bug"))).code, "internal_error", "code");
});

test("a refusal of the whole batch (401, 409) settles every send in it, without a split", async () => {
  const seen = network("offline");
  const gw = client({ base: 60000, cap: 60000 });
  const sends = [1, 2, 3].map((n) => gw.send(`app/${n}`));
  await within(3000, () => seen.length === 1, "the first try");
  const again = network(envelope(409, "poster_changed"));
  await gw.flush();
  same(again.length, 1, "one request");
  for (const sent of sends) same((await rejection(sent)).code, "poster_changed", "code");
  same(gw.pending(), 0, "none kept");
});

test("every request can be aborted (a hung connection must not hold the queue)", async () => {
  let signal;
  network(accepted);
  const realFetch = window.fetch;
  window.fetch = (url, init) => ((signal = init.signal), realFetch(url, init));
  await client().send("app/timed");
  check(signal instanceof AbortSignal && !signal.aborted, `signal ${signal}`);
});

// -- the queue -----------------------------------------------------------------------------

test("queued sends go oldest first, in batches of at most maxBatch events", async () => {
  const seen = network("offline");
  const gw = client({ maxBatch: 3, base: 60000, cap: 60000 }); // no retry fires during the test
  const sends = ["a", "b", "c", "d", "e"].map((name) => gw.send(`app/${name}`));
  await within(3000, () => seen.length === 1, "the first try");
  same(gw.pending(), 5, "queued");
  const again = network(accepted);
  await gw.flush();
  same(names(again), [["app/a", "app/b", "app/c"], ["app/d", "app/e"]], "batches");
  same((await Promise.all(sends)).flat().length, 5, "every send resolved");
  same(gw.pending(), 0, "queue");
});

test("a send larger than maxBatch goes alone, and the service has the last word", async () => {
  const seen = network("offline");
  const gw = client({ maxBatch: 2, base: 60000, cap: 60000 });
  const small = gw.send("app/small");
  await within(3000, () => seen.length === 1, "the first try");
  const big = gw.send([{ name: "app/1" }, { name: "app/2" }, { name: "app/3" }]);
  const again = network((body) => ([].concat(body).length > 2 ? envelope(422, "validation_failed", { _schema: ["Too many."] }) : accepted(body)));
  await gw.flush();
  same(names(again), [["app/small"], ["app/1", "app/2", "app/3"]], "requests");
  same((await small).length, 1, "the small send");
  same((await rejection(big)).code, "validation_failed", "the big send");
});

test("one refused send does not sink the others batched with it", async () => {
  const seen = network("offline");
  const gw = client({ base: 60000, cap: 60000 });
  const first = gw.send("app/good-1");
  await within(3000, () => seen.length === 1, "the first try");
  const bad = gw.send("app/bad", { x: 1 });
  const last = gw.send("app/good-2");
  const refusing = (body) =>
    [].concat(body).some((event) => event.name === "app/bad")
      ? envelope(403, "event_not_allowed", Array.isArray(body) ? { 1: { name: ["No."] } } : { name: ["No."] })
      : accepted(body);
  const again = network(refusing);
  await gw.flush();
  same(names(again), [["app/good-1", "app/bad", "app/good-2"], ["app/good-1"], ["app/bad"], ["app/good-2"]], "requests");
  same((await first).length, 1, "first");
  const error = await rejection(bad);
  same([error.code, error.errors], ["event_not_allowed", { name: ["No."] }], "the refused send's own errors");
  same((await last).length, 1, "last");
});

test("past its budget a send rejects as queued; its events stay and go later", async () => {
  network("offline");
  const gw = client({ base: 60000, cap: 60000 });
  const started = performance.now();
  const error = await rejection(gw.send("app/patient", {}, { budget: 150 }));
  const waited = performance.now() - started;
  check(waited >= 140 && waited < 5000, `rejected after ${waited} ms, budget 150`);
  same([error.code, error.status, error.queued], ["timeout", 0, true], "error");
  same(error.events.map((event) => event.name), ["app/patient"], "events");
  same(gw.pending(), 1, "still queued");
  const seen = network(accepted);
  await gw.flush();
  same(names(seen), [["app/patient"]], "sent later");
  same(gw.pending(), 0, "queue");
});

test("retries stop when every send's budget is spent, and start again with the next send", async () => {
  const seen = network("offline");
  const gw = client({ base: 20, cap: 20, budget: 200 });
  const error = await rejection(gw.send("app/a"));
  same(error.queued, true, "queued");
  await sleep(100);
  const tries = seen.length;
  check(tries >= 2 && tries <= 40, `${tries} tries in the 200 ms budget`);
  await sleep(200);
  same(seen.length, tries, "no tries after the budget");
  const now = network(accepted);
  same((await gw.send("app/b")).length, 1, "the next send");
  same(names(now), [["app/a", "app/b"]], "the older event went first, with it");
});

test("the queue is in localStorage until the service answers", async () => {
  network("offline");
  const gw = client({ base: 60000, cap: 60000 });
  const sent = gw.send("app/stored", { k: "v" }, { id: "stored-1" });
  await sleep(50);
  const keys = Object.keys(localStorage).filter((key) => key.startsWith(`inngest-gateway ${gw.endpoint} `));
  same(keys.length, 1, "stored keys");
  same(JSON.parse(localStorage.getItem(keys[0])).events[0].id, "stored-1", "the stored event");
  network(accepted);
  await gw.flush();
  await sent;
  same(Object.keys(localStorage).filter((key) => key.includes(gw.endpoint)), [], "removed once acknowledged");
});

test("with localStorage full, the event is kept in the page and still sent", async () => {
  const filler = "x".repeat(256 * 1024);
  let n = 0;
  try {
    for (;;) localStorage.setItem(`filler-${n++}`, filler);
  } catch {}
  try {
    const seen = network(accepted);
    const gw = client();
    same((await gw.send("app/spilled", { big: "y".repeat(1024) })).length, 1, "ids");
    same(names(seen), [["app/spilled"]], "sent");
  } finally {
    for (let i = 0; i < n; i++) localStorage.removeItem(`filler-${i}`);
  }
});

test("an answer another tab got settles this tab's send (the storage event)", async () => {
  network("offline");
  const gw = client({ base: 60000, cap: 60000 });
  const sent = gw.send("app/elsewhere");
  await sleep(50);
  const [key] = Object.keys(localStorage).filter((k) => k.startsWith(`inngest-gateway ${gw.endpoint} `));
  window.dispatchEvent(new StorageEvent("storage", { key, newValue: JSON.stringify({ ids: ["from-the-other-tab"] }) }));
  same(await sent, ["from-the-other-tab"], "ids");

  const refused = gw.send("app/elsewhere-refused");
  await sleep(50);
  const [key2] = Object.keys(localStorage).filter((k) => k.startsWith(`inngest-gateway ${gw.endpoint} `) && k !== key);
  const failure = [401, { code: "login_required", message: "Log in first.", errors: {} }, []];
  window.dispatchEvent(new StorageEvent("storage", { key: key2, newValue: JSON.stringify({ failure }) }));
  same((await rejection(refused)).code, "login_required", "code");
});

test("events carry the poster they were queued for, one poster per request", async () => {
  let seen = network("offline");
  const endpoint = `/t/${++endpoints}`;
  const ada = createClient({ endpoint, poster: "tag-of-ada", base: 60000, cap: 60000 });
  const first = ada.send("app/by-ada");
  await within(3000, () => seen.length === 1, "the first try");
  // The same queue, as a later page of another poster finds it (the poster is per page).
  const key = Object.keys(localStorage).find((k) => k.startsWith(`inngest-gateway ${ada.endpoint} `));
  const stored = JSON.parse(localStorage.getItem(key));
  same(stored.p, "tag-of-ada", "stored with the event");
  localStorage.setItem(`${key}~bob`, JSON.stringify({ events: [{ name: "app/by-bob", id: "b-1", ts: 1 }], p: "tag-of-bob" }));
  localStorage.setItem(`${key}~none`, JSON.stringify({ events: [{ name: "app/unbound", id: "n-1", ts: 1 }] }));
  const headers = [];
  seen = network((body) => accepted(body));
  const realFetch = window.fetch;
  window.fetch = (url, init) => (headers.push(init.headers["X-Inngest-Poster"] || null), realFetch(url, init));
  await ada.flush();
  await first;
  same(names(seen), [["app/by-ada"], ["app/by-bob"], ["app/unbound"]], "requests");
  same(headers, ["tag-of-ada", "tag-of-bob", null], "X-Inngest-Poster");
});

test("a client of another endpoint does not take the page's poster tag", async () => {
  const seen = network(accepted);
  const headers = [];
  const realFetch = window.fetch;
  window.fetch = (url, init) => (headers.push(init.headers["X-Inngest-Poster"] || null), realFetch(url, init));
  const defaults = { ...gateway.configure({}) };
  try {
    gateway.configure({ endpoint: "/own-api", poster: "tag-of-this-page" });
    await createClient().send("app/own");
    await createClient({ endpoint: "https://events.example.com/api" }).send("app/other");
    await createClient({ endpoint: "https://events2.example.com/api", poster: "given" }).send("app/given");
  } finally {
    gateway.configure(defaults);
  }
  same(headers, ["tag-of-this-page", null, "given"], "X-Inngest-Poster");
  same(seen.length, 3, "requests");
});

// -- credentials, keepalive, leaving the page --------------------------------------------

test("credentials: same-origin for this site's service, include for another origin's", async () => {
  const seen = network(accepted);
  await client().send("app/here");
  await createClient({ endpoint: "http://localhost:9/api" }).send("app/there");
  same(seen.map((request) => [request.url, request.credentials]), [[`${location.origin}/t/${endpoints}`, "same-origin"], ["http://localhost:9/api", "include"]], "requests");
});

test("sends use keepalive while the page's 64 KiB budget allows", async () => {
  const seen = network(accepted);
  const gw = client();
  await gw.send("app/small", { text: "x".repeat(1000) });
  await gw.send("app/large", { text: "x".repeat(70 * 1024) });
  same(seen.map((request) => request.keepalive), [true, false], "keepalive");
});

test("after a keepalive request fails, the retry is a plain one (the budget may be taken)", async () => {
  const seen = network("offline", "offline", accepted);
  await client().send("app/retried");
  same(seen.map((request) => request.keepalive), [true, false, true], "keepalive on each try");
});

test("pagehide sends what is queued at once, in keepalive requests within 64 KiB", async () => {
  const seen = network("offline");
  const gw = client({ base: 60000, cap: 60000 });
  const sends = [1, 2, 3].map((n) => gw.send(`app/big-${n}`, { text: "x".repeat(30 * 1024) }));
  await within(3000, () => seen.length === 1, "the first try");
  const leaving = network(accepted);
  window.dispatchEvent(new PageTransitionEvent("pagehide", { persisted: true }));
  window.dispatchEvent(new PageTransitionEvent("pageshow", { persisted: true })); // back (bfcache)
  // Synchronously: the page may be gone after its pagehide handlers.
  same(names(leaving), [["app/big-1", "app/big-2"]], "sent during pagehide");
  same(leaving.map((request) => request.keepalive), [true], "keepalive");
  same((await Promise.all(sends.slice(0, 2))).length, 2, "the two sent");
  same(gw.pending(), 1, "the third waits for the next visit (or flush)");
  await gw.flush();
  await sends[2];
});

const hidden = (body) => {
  Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
  Object.defineProperty(document, "visibilityState", { configurable: true, get: () => "hidden" });
  try {
    return body();
  } finally {
    delete document.hidden;
    delete document.visibilityState;
  }
};

test("pagehide sends again what is in flight in a plain request (unload would abort it)", async () => {
  let seen = network("offline", () => new Promise(() => {})); // the retry hangs
  const gw = client({ base: 10, cap: 10 });
  const sent = gw.send("app/plain");
  await within(3000, () => seen.length === 2, "the retry");
  same(seen.map((request) => request.keepalive), [true, false], "the retry is plain");
  seen = network(accepted);
  window.dispatchEvent(new PageTransitionEvent("pagehide", { persisted: true }));
  window.dispatchEvent(new PageTransitionEvent("pageshow", { persisted: true }));
  same(seen.map((request) => [request.body.name, request.keepalive]), [["app/plain", true]], "sent again");
  same((await sent).length, 1, "ids");
});

test("the keepalive budget is counted in bytes, not characters", async () => {
  let seen = network("offline");
  const gw = client({ base: 60000, cap: 60000 });
  const text = "字".repeat(15000); // 45,000 bytes in UTF-8
  const sends = [gw.send("app/cjk-1", { text }), gw.send("app/cjk-2", { text })];
  await within(3000, () => seen.length === 1, "the first try");
  seen = network(accepted);
  window.dispatchEvent(new PageTransitionEvent("pagehide", { persisted: true }));
  window.dispatchEvent(new PageTransitionEvent("pageshow", { persisted: true }));
  same(names(seen), [["app/cjk-1"]], "what fits in 64 KiB goes");
  await sends[0];
  same(gw.pending(), 1, "the other waits");
  await gw.flush();
  await sends[1];
});

test("a page going to the background sends at once what waits for another tab's turn", async () => {
  network(accepted);
  const gw = client();
  // Another tab holds the queue's lock (it is flushing): this tab's run waits for it.
  let release;
  const held = new Promise((resolve) => (release = resolve));
  await new Promise((granted) => navigator.locks.request(`inngest-gateway ${gw.endpoint} `, () => (granted(), held)));
  const seen = network(accepted);
  const sent = gw.send("app/hidden");
  await sleep(50);
  same(seen.length, 0, "waiting for the lock");
  hidden(() => document.dispatchEvent(new Event("visibilitychange")));
  same(names(seen), [["app/hidden"]], "sent on visibilitychange");
  same(seen[0].keepalive, true, "keepalive");
  same((await sent).length, 1, "ids");
  release();
});

test("a hidden page keeps to the backoff; pagehide does not", async () => {
  const seen = network([503, { status: "error", code: "outbox_full", errors: {} }, { "Retry-After": "60" }]);
  const gw = client();
  const sent = gw.send("app/later");
  await within(3000, () => seen.length === 1, "the first try");
  network(accepted);
  const again = network(accepted);
  hidden(() => document.dispatchEvent(new Event("visibilitychange")));
  hidden(() => gw.send("app/while-hidden"));
  await sleep(50);
  same(again.length, 0, "nothing before Retry-After while the page lives");
  window.dispatchEvent(new PageTransitionEvent("pagehide", { persisted: true }));
  window.dispatchEvent(new PageTransitionEvent("pageshow", { persisted: true }));
  same(names(again), [["app/later", "app/while-hidden"]], "at pagehide, the last chance");
  same((await sent).length, 1, "ids");
});

// -- forms -----------------------------------------------------------------------------------

const form = (html) => {
  const element = document.createElement("form");
  element.method = "post";
  element.setAttribute("action", `/t/${++endpoints}`);
  element.innerHTML = html;
  document.body.append(element);
  return element;
};
const state = (element, wanted) => within(2000, () => element.dataset.inngestState === wanted, `form state ${wanted}`);

test("a data-inngest-event form posts its fields as data and shows the answer in place", async () => {
  const seen = network(accepted);
  const element = form(`<input name="email" value="ada@example.com"><input name="next" value="/sent">
    <input type="checkbox" name="topic" value="a" checked><input type="checkbox" name="topic" value="b" checked>
    <input type="file" name="upload"><button name="plan" value="pro">Go</button>`);
  element.dataset.inngestEvent = "app/signup";
  element.addEventListener("inngest:sent", (event) => (element.ids = event.detail.ids));
  element.querySelector("button").click();
  await state(element, "sent");
  same(events(seen)[0].map((event) => [event.name, event.data]), [["app/signup", { email: "ada@example.com", topic: ["a", "b"], plan: "pro" }]], "posted");
  same(element.querySelector("[data-inngest-result]").textContent, "Sent.", "result");
  same(element.ids, [`id-of-${seen[0].body.id}`], "the inngest:sent event's ids");
  same(location.pathname, "/", "the page stayed");
});

test("a form without a name in data-inngest-event takes its name field; texts can be set", async () => {
  const seen = network(accepted);
  const element = form(`<input name="name" value="app/from-field"><input name="m" value="hi"><button>Go</button>`);
  element.setAttribute("data-inngest-event", "");
  element.dataset.inngestSent = "Thanks!";
  element.querySelector("button").click();
  await state(element, "sent");
  same(events(seen)[0].map((event) => [event.name, event.data]), [["app/from-field", { m: "hi" }]], "posted");
  same(element.querySelector("[data-inngest-result]").textContent, "Thanks!", "result");
});

test("a refused form marks its fields and shows the messages; the next try clears them", async () => {
  network(envelope(422, "validation_failed", { data: { email: ["Not a valid email address."] } }));
  const element = form(`<input name="email" value="nope"><input name="other" value="x"><p data-inngest-result id="out"></p><button>Go</button>`);
  element.dataset.inngestEvent = "app/signup";
  element.querySelector("button").click();
  await state(element, "error");
  same(element.querySelector("#out").textContent, "Refused: validation_failed. email: Not a valid email address.", "message");
  same(element.elements.email.getAttribute("aria-invalid"), "true", "email marked");
  same(element.elements.other.hasAttribute("aria-invalid"), false, "other not marked");
  network(accepted);
  element.querySelector("button").click();
  await state(element, "sent");
  same(element.elements.email.hasAttribute("aria-invalid"), false, "cleared");
});

test("fields named like the form's own properties do not break it", async () => {
  const seen = network(accepted);
  const element = form(`<input name="action" value="subscribe"><input name="dataset" value="d">
    <input name="querySelectorAll" value="q"><input name="constructor" value="c"><button>Go</button>`);
  element.setAttribute("data-inngest-event", "app/odd-fields");
  element.querySelector("button").click();
  await within(2000, () => element.getAttribute("data-inngest-state") === "sent", "sent");
  same(events(seen)[0][0].data, { action: "subscribe", dataset: "d", querySelectorAll: "q", constructor: "c" }, "data");
  check(seen[0].url.endsWith(element.getAttribute("action")), seen[0].url);
});

test("a double click on a form sends once", async () => {
  const seen = network(async (body) => accepted(body));
  const element = form(`<input name="a" value="1"><button>Go</button>`);
  element.dataset.inngestEvent = "app/once";
  const button = element.querySelector("button");
  button.click();
  button.click();
  await state(element, "sent");
  await sleep(50);
  same(seen.length, 1, "requests");
});

test("a form whose send outlives its budget says it is saved for later", async () => {
  network("offline");
  const element = form(`<input name="a" value="1"><button>Go</button>`);
  element.dataset.inngestEvent = "app/later";
  createClient({ endpoint: element.getAttribute("action"), budget: 100, base: 60000, cap: 60000 });
  element.querySelector("button").click();
  await state(element, "queued");
  same(element.querySelector("[data-inngest-result]").textContent, "Saved; it will be sent later.", "result");
});

test("the classic script and the module are one client", async () => {
  same(window.InngestGateway, gateway, "window.InngestGateway is the module's default export");
  same(typeof gateway.send, "function", "send");
  check(createClient({ endpoint: "/same" }) === createClient({ endpoint: `${location.origin}/same` }), "one client per endpoint");
});

// -- the runner ------------------------------------------------------------------------------

// A rejection nobody handles, or an error thrown outside a test's own promise (in a timer,
// say), is charged to the test running when it is reported, and fails that test alone.
// Outside any test it stays a console error, which fails the page as a whole.
let running = false;
let stray = [];
const strayReason = (reason) => (reason && reason.stack ? reason.stack : String(reason));
const charge = (what, reason, event) => {
  if (!running) return;
  event.preventDefault(); // reported on the test, not as a page-wide console error
  stray.push(`${what}: ${strayReason(reason)}`);
};
window.addEventListener("unhandledrejection", (event) => charge("unhandled rejection", event.reason, event));
window.addEventListener("error", (event) => charge("uncaught error", event.error ?? event.message, event));

window.testNames = () => [...tests.keys()];
window.runTests = async () => {
  const results = {};
  const realFetch = window.fetch;
  for (const [name, body] of tests) {
    localStorage.clear();
    [running, stray] = [true, []];
    try {
      let timeout;
      const limit = new Promise((_, reject) => (timeout = setTimeout(() => reject(new Failure("did not finish in 10 s")), 10000)));
      await Promise.race([body(), limit]).finally(() => clearTimeout(timeout));
      results[name] = "ok";
    } catch (error) {
      results[name] = error instanceof Failure ? error.message : String(error && error.stack ? error.stack : error);
    } finally {
      window.fetch = realFetch;
      Date.now = realNow;
      document.querySelectorAll("form").forEach((element) => element.remove());
    }
    // Unhandled rejections are reported in a task after the microtasks that made them.
    await sleep(0);
    running = false;
    if (stray.length) results[name] = [...(results[name] === "ok" ? [] : [results[name]]), ...stray].join("\n");
  }
  localStorage.clear();
  return results;
};
window.testsReady = true;
