/*! inngest-gateway browser client: events through the gateway's POST /api, never dropped. */
// A classic script: <script src="/inngest-gateway.js" data-endpoint="/api" data-max-batch="100"
// defer> sets window.InngestGateway. inngest-gateway.mjs imports this file as a module and
// exports the same functions. No dependencies and no build step: this file is what pages load.
//
// Every event is written to localStorage before it is sent, with a client id made once, and
// removed only when the service has answered with its id: a 503, a 429, a lost connection, a
// reload or a crash of the tab leave it queued, and it goes (oldest first, in batches) when
// the service can be reached again. Retries carry the same id, which the service turns into
// the same event id for the same poster, so Inngest drops any repeat.
//
// The parts, in order: storage (the queue's records), answers (what a response means), the
// page's share (what every client of the page has in common), a client (one endpoint's queue:
// its batches, requests, flush and keepalive rescue), forms, and the start.
//
// Its size is measured minified (terser) and gzipped; terser renames the local names, so they
// are written out in full. Property names and strings stay as they are: the stored records'
// `events` and `p` (the poster tag) are read by pages of other versions of this file.
((root) => {
  "use strict";
  if (root.InngestGateway) return; // loaded twice (as a script and as a module): one queue

  const PREFIX = "inngest-gateway "; // of every stored key: then the endpoint and a space
  const KEEPALIVE_BYTES = 65536; // what a page may have in flight in keepalive requests
  const defaults = {
    endpoint: "/api",
    maxBatch: 100, // the service's INNGEST_GATEWAY_API_MAX_BATCH
    budget: 30000, // how long a send's promise waits, retries included
    base: 500, // the first retry's delay, doubled on each try up to `cap`
    cap: 30000,
    poster: "", // who views the page, as the service tags them (see "Poster tags" below)
  };
  // The script tag's data-* attributes (data-max-batch="100" is dataset.maxBatch) set them.
  for (const [name, value] of Object.entries(root.document?.currentScript?.dataset || {})) {
    if (!(name in defaults)) continue;
    defaults[name] = typeof defaults[name] === "string" ? value : Number(value);
  }

  // -- storage -------------------------------------------------------------------------------
  // The queue lives in localStorage, so that it outlives a reload or a crash of the tab and
  // every tab of the site sees it. Where localStorage is missing, refused (disabled, a
  // sandboxed frame) or full, a write goes to this page's memory instead: the event is still
  // sent, only not kept past the page. Values are JSON; a record that cannot be read is null.
  const memory = new Map();
  let local = null;
  try {
    local = root.localStorage;
  } catch {} // storage disabled: every record lives in `memory`
  const storage = {
    load: (key) => {
      try {
        return JSON.parse(memory.has(key) ? memory.get(key) : local.getItem(key));
      } catch {
        return null;
      }
    },
    save: (key, value) => {
      const text = JSON.stringify(value);
      try {
        local.setItem(key, text);
      } catch {
        memory.set(key, text);
      }
    },
    remove: (key) => {
      memory.delete(key);
      try {
        local.removeItem(key);
      } catch {}
    },
    // The keys starting with `prefix`, in both places, sorted (a queue's keys sort by age).
    keys: (prefix) => {
      const keys = [...memory.keys()];
      try {
        keys.push(...Object.keys(local));
      } catch {}
      return keys.filter((key) => key.startsWith(prefix)).sort();
    },
  };

  // A client id: a random UUID, or (outside secure contexts, which lack randomUUID) 128 random
  // bits in hex.
  const uuid = () =>
    crypto.randomUUID
      ? crypto.randomUUID()
      : crypto
          .getRandomValues(new Uint8Array(16))
          .reduce((id, byte) => id + (byte + 256).toString(16).slice(1), "");

  // Milliseconds to wait before try number `attempt + 1`: exponential from `base` up to `cap`,
  // half of it random (so that many pages do not come back at once), never sooner than the
  // server's Retry-After.
  const backoff = (
    attempt,
    retryAfter = 0,
    { base = defaults.base, cap = defaults.cap } = {},
    random = Math.random,
  ) => {
    // Delays that are not positive numbers (data-base="" is 0) give 500 ms, never 0: a
    // retry at once would post again and again for the whole budget.
    const ceiling = Math.max(Math.min(cap, base * 2 ** attempt), 0) || 500;
    return Math.max(retryAfter, ceiling / 2 + (random() * ceiling) / 2);
  };
  // Retry-After in milliseconds: delay-seconds or an HTTP date; 0 when absent or unreadable.
  const retryAfter = (value) => {
    const seconds = Number(value);
    return seconds >= 0 ? seconds * 1000 : Math.max(0, Date.parse(value) - Date.now()) || 0;
  };

  // -- answers -------------------------------------------------------------------------------
  // What the answer to a batch means, from its status (0: no answer at all) and its body (the
  // service's JSON envelope, or {} for anything else):
  //   DONE   the service took the events: one id for each, in order;
  //   RETRY  worth another try, not before the backoff and the server's Retry-After: no
  //          answer, a 2xx that is not the service's (a captive portal's), the service's 429
  //          or 503, or any other 408, 429 or 5xx page (a proxy's, a CDN's);
  //   SPLIT  a refusal naming events (field errors), or of a body too large, may be about one
  //          send of a batch of several: each is sent alone to learn which;
  //   FAIL   any other refusal is final, for every send in the batch.
  const DONE = 1;
  const RETRY = 2;
  const SPLIT = 3;
  const FAIL = 4;
  const classify = (status, body, eventCount, sendCount) => {
    const ok = status > 199 && status < 300;
    if (ok && Array.isArray(body.ids) && body.ids.length === eventCount) return DONE;
    const temporary = body.code
      ? status === 429 || status === 503 // the service's own: rate limited, or its outbox
      : status > 499 || status === 408 || status === 429; // a page from something in between
    if (status < 300 || temporary) return RETRY;
    const aboutEvents = status === 413 || Object.keys(body.errors || {}).length;
    return sendCount > 1 && aboutEvents ? SPLIT : FAIL;
  };

  class GatewayError extends Error {
    // A failure without an answer is never final (it is retried, then "timeout"), so every
    // error but that one has a status; an answer that is not the envelope is an "http_error".
    constructor(status, body, events = [], queued = false) {
      super(body.message || `HTTP ${status}`);
      Object.assign(this, {
        name: "GatewayError",
        status,
        code: body.code || "http_error",
        errors: body.errors || {},
        requestId: body.request_id || null,
        events,
        queued,
      });
    }
  }

  // -- the page's share ----------------------------------------------------------------------
  const clients = new Map(); // endpoint -> its client: one queue per endpoint and page
  const byteLength = (text) => new Blob([text]).size; // UTF-8 bytes, as the browser counts
  // What this page has in flight in keepalive requests, by every client: the browser caps it
  // at 64 KiB (such requests outlive the page) and fails a request over it.
  let keepaliveBytes = 0;
  let lastKeyTime = 0; // the queue keys' clock: it never repeats nor goes back
  // Between pagehide and pageshow a send is the page's last word: it goes at once.
  let leaving = false;
  addEventListener("pagehide", () => (leaving = true));
  addEventListener("pageshow", () => (leaving = false));

  // The tab lock: one flush of a queue at a time across the site's tabs (Web Locks, where the
  // browser has them), so that two tabs do not post the same events side by side.
  const withTabLock = (name, run) => navigator.locks?.request(name, run) || run();

  // -- a client: one endpoint's queue --------------------------------------------------------
  function createClient(options = {}) {
    const endpoint = new URL(options.endpoint || defaults.endpoint, location.href).href;
    if (clients.has(endpoint)) return clients.get(endpoint);
    // Poster tags: the page's tag (data-poster) is for the page's own endpoint; another
    // service could not match it, so other endpoints get one only when given it.
    const own = endpoint === new URL(defaults.endpoint, location.href).href;
    const config = { ...defaults, poster: own ? defaults.poster : "", ...options };
    const prefix = `${PREFIX}${endpoint} `; // of this queue's keys, and the name of its lock
    // The session cookie goes along to this site's own service, and to another origin's only
    // when that service lists this page's origin in INNGEST_GATEWAY_TRUSTED_ORIGINS (CORS with credentials).
    const credentials = new URL(endpoint).origin === location.origin ? "same-origin" : "include";

    const waiting = new Map(); // queue key -> [resolve, reject] of this page's send
    const inflight = new Map(); // queue key -> whether its request is a keepalive one
    // When to try again.
    let attempt = 0; // failed tries in a row: the backoff's exponent
    let notBefore = 0; // no request before this (backoff, Retry-After), but at pagehide
    let until = 0; // retries stop here (the latest send's budget), until the next send or "online"
    let offline = false; // the last try got no answer at all
    let solo = 0; // sends still to post one per request, after a batch was refused
    let plain = false; // a keepalive request got no answer: the next request is a plain one
    // The flush under way, whether another was asked for meanwhile, and the retry's timer.
    let running = null;
    let again = false;
    let timer = 0;

    // -- settling a send, in this page and in the page that made it -------------------------
    // Another tab may be the one flushing the queue: the page that made the send learns the
    // answer from the "storage" event of this write, which the removal follows at once.
    const settle = (key, ids, failure) => {
      storage.save(key, { ids, failure });
      storage.remove(key);
      answer(key, ids, failure);
    };
    // Resolve or reject the send's promise; a refusal of a send nobody awaits (queued by an
    // earlier page) is an "inngest-gateway:rejected" event of the window.
    const answer = (key, ids, failure) => {
      const promise = waiting.get(key);
      const error = failure && new GatewayError(...failure);
      waiting.delete(key);
      if (promise) promise[ids ? 0 : 1](ids || error);
      else if (error) {
        root.dispatchEvent(new CustomEvent("inngest-gateway:rejected", { detail: error }));
      }
    };
    addEventListener("storage", ({ key, newValue }) => {
      const record = waiting.has(key) && newValue && JSON.parse(newValue);
      if (record?.ids || record?.failure) answer(key, record.ids, record.failure);
    });

    // -- batches and requests ----------------------------------------------------------------
    // The oldest sends not in flight (at pagehide: not in a keepalive request, which outlives
    // the page), up to maxBatch events (a larger send goes alone) and, when `room` is given,
    // that many bytes (a keepalive request's budget). One request, one poster: sends queued
    // for another poster go in a request of their own.
    const nextBatch = (room) => {
      const batch = [];
      let count = 0;
      for (const key of storage.keys(prefix)) {
        const busy = room ? inflight.get(key) : inflight.has(key);
        const send = !busy && storage.load(key); // {events, p}; an answer record has no events
        if (!send?.events) continue;
        count += send.events.length;
        if (room) room -= byteLength(JSON.stringify(send.events)); // measured only at pagehide
        const full = solo || count > config.maxBatch || room < 0;
        if (batch.length && (full || send.p !== batch[0].p)) break;
        batch.push({ key, ...send });
      }
      return batch;
    };

    // POST one body; resolves, never rejects, to [status, body, wait]: like a GatewayError's
    // first arguments, the status (0 when no answer came) and the JSON body ({} when it has
    // none), then the delay its Retry-After asks for.
    const request = (body, keepalive, poster) => {
      let status = 0;
      let wait = 0;
      return fetch(endpoint, {
        method: "POST",
        body,
        keepalive, // outlives the page: a click that navigates away still sends its event
        credentials,
        // A request that hangs must not hold the queue (and its lock) for ever.
        signal: AbortSignal.timeout?.(30000),
        // JSON is answered in JSON, errors too. The poster tag makes the service refuse
        // events queued by someone else than who is logged in now.
        headers: {
          "Content-Type": "application/json",
          ...(poster && { "X-Inngest-Poster": poster }),
        },
      })
        .then((response) => {
          status = response.status;
          wait = retryAfter(response.headers.get("Retry-After"));
          return response.json();
        })
        .catch(() => {})
        .then((json) => [status, json || {}, wait]);
    };

    // Post a batch: resolves to true when it should be tried again. Rescuing (the page is
    // going away), only a keepalive request will do, and `false` says it would not fit.
    const post = (batch, rescuing) => {
      const events = batch.flatMap((send) => send.events);
      const body = JSON.stringify(events.length === 1 ? events[0] : events);
      const size = byteLength(body);
      // After a keepalive request got no answer, the next one is plain: other scripts of the
      // page may hold the keepalive budget, which the browser enforces by failing the fetch.
      const keepalive = (rescuing || !plain) && keepaliveBytes + size <= KEEPALIVE_BYTES;
      if (rescuing && !keepalive) return false;
      if (keepalive) keepaliveBytes += size;
      for (const send of batch) inflight.set(send.key, keepalive);
      return request(body, keepalive, batch[0].p).then((answer) => {
        const [status] = answer;
        plain = keepalive && !status;
        if (keepalive) keepaliveBytes -= size;
        for (const send of batch) inflight.delete(send.key);
        return apply(batch, events, answer);
      });
    };

    // Act on the answer to a batch (see classify); true when it is to be tried again.
    const apply = (batch, events, [status, body, wait]) => {
      const outcome = classify(status, body, events.length, batch.length);
      if (outcome === RETRY) {
        offline = !status;
        notBefore = Date.now() + backoff(attempt++, wait, config);
        return true;
      }
      if (outcome === SPLIT) {
        solo = batch.length;
        return;
      }
      // Done or failed: each send of the batch gets its own ids, or the refusal with its events.
      let at = 0;
      for (const { key, events } of batch) {
        if (outcome === DONE) settle(key, body.ids.slice(at, (at += events.length)));
        else settle(key, null, [status, body, events]);
      }
      attempt = 0;
      if (solo) solo--;
    };

    // -- the queue's flush -------------------------------------------------------------------
    // Post batch after batch, oldest first, until the queue is empty or a try fails.
    const drain = async () => {
      let due = false; // the backoff holds what is queued: a try is due later
      while (navigator.onLine !== false && !(due = Date.now() < notBefore)) {
        const batch = nextBatch();
        if (!batch.length || (due = await post(batch))) break;
      }
      again = false; // a send during a failed try waits for the retry
      scheduleRetry(due);
    };
    // Set the timer for the try that is `due`, if it falls within the budget. The clock is
    // read once per decision: the time may have come since `due` was known, and the timer
    // then fires at once.
    const scheduleRetry = (due) => {
      clearTimeout(timer);
      timer = 0;
      if (due && notBefore <= until && pending()) {
        timer = setTimeout(() => ((timer = 0), flush()), Math.max(0, notBefore - Date.now()));
      }
    };
    // Send what is queued now, one run at a time in this tab and under the tab lock. The
    // promise settles when the queue is empty or waits for a retry.
    const flush = () => {
      if (running) {
        again = true;
        return running;
      }
      clearTimeout(timer);
      timer = 0;
      running = withTabLock(prefix, drain).finally(() => {
        running = null;
        if (again) return flush();
      });
      return running;
    };
    // A new send, or a reason to think the service is back: send now, or when the backoff
    // and the server's Retry-After allow, trying until `budget` from now at least.
    const requestFlush = (budget = config.budget) => {
      until = Math.max(until, Date.now() + budget);
      if (!timer) Date.now() < notBefore ? scheduleRetry(true) : flush();
    };

    // -- keepalive: leaving the page -----------------------------------------------------------
    // The page is going away (or may be killed in the background): whatever is queued and not
    // in a keepalive request goes now in keepalive requests, as far as their 64 KiB allow. At
    // pagehide this is the last chance; a hidden page waits for its backoff like any other.
    const rescue = (leaving) => {
      if (navigator.onLine === false || !(leaving || Date.now() >= notBefore)) return;
      // nextBatch() sizes each batch to fit; only a first send larger than what is left stops.
      for (;;) {
        const batch = nextBatch(KEEPALIVE_BYTES - keepaliveBytes);
        if (!batch.length || !post(batch, true)) return;
      }
    };
    addEventListener("online", () => {
      // A backoff after lost connections was the connection's, not the server's: try now.
      if (offline) notBefore = attempt = timer = 0;
      requestFlush();
    });
    addEventListener("pageshow", () => requestFlush());
    addEventListener("pagehide", () => rescue(true));
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) rescue();
      else requestFlush();
    });

    // -- the client's API ----------------------------------------------------------------------
    // send(name, data, options) or send(events, options): queue the events, then send them.
    const send = (name, data, options) => {
      const many = Array.isArray(name);
      options = (many ? data : options) || {};
      return new Promise((resolve, reject) => {
        // Each event's client id and time are set once: every retry carries the same.
        const events = (many ? name : [{ name, data, id: options.id }]).map((event) => ({
          ...event,
          id: event.id || uuid(),
          ts: event.ts || Date.now(), // when it happened, not when the queue got it through
        }));
        // The key sorts by the time of the send (16 digits); random characters keep two tabs'
        // keys apart.
        lastKeyTime = Math.max(Date.now(), lastKeyTime + 1);
        const key = prefix + (1e15 + lastKeyTime) + uuid().slice(0, 8);
        storage.save(key, { events, p: config.poster });
        waiting.set(key, [resolve, reject]);
        // Past its budget the promise rejects as queued; the events stay and go later.
        const budget = options.budget || config.budget;
        setTimeout(() => {
          const message = "Not acknowledged in time; still queued.";
          if (waiting.has(key)) answer(key, null, [0, { code: "timeout", message }, events, true]);
        }, budget);
        requestFlush(budget);
        // A send while the page is hidden (from a pagehide listener, say) may be its last
        // chance: it goes now, not after the lock is granted.
        if (document.visibilityState === "hidden") rescue(leaving);
      });
    };
    // How many sends (groups of events) are queued for this endpoint, by any tab of the site.
    const pending = () => storage.keys(prefix).length;
    // flush() of the API tries now, whatever the backoff says (a "retry now" button, say).
    const client = { endpoint, send, flush: () => ((notBefore = 0), flush()), pending };
    clients.set(endpoint, client);
    requestFlush();
    return client;
  }

  // -- forms ---------------------------------------------------------------------------------
  // <form data-inngest-event="app/signup" action="/api" method="post"> posts through the
  // client and shows the answer in place; without JavaScript it posts and gets the 303.
  // The form's own DOM methods are called from Element.prototype: a field named "action",
  // "dataset" or "querySelector" hides the form's property of that name.
  const dom = (method, node, ...args) => Element.prototype[method].call(node, ...args);
  const attr = (form, name) => dom("getAttribute", form, `data-inngest-${name}`);

  // Show a state (sending, sent, queued, error) on the form and its text in the form's
  // [data-inngest-result] element (an <output>, a live region, is added when there is none),
  // and tell the page with an "inngest:<state>" event.
  const show = (form, state, text, detail) => {
    dom("setAttribute", form, "data-inngest-state", state);
    let output = dom("querySelector", form, "[data-inngest-result]");
    if (!output) {
      output = dom("appendChild", form, document.createElement("output"));
      output.setAttribute("data-inngest-result", "");
    }
    output.textContent = text;
    dom("dispatchEvent", form, new CustomEvent(`inngest:${state}`, { bubbles: true, detail }));
  };

  // A refusal: its message and the field errors of the form's one event ({name: [...]} and
  // {data: {field: [...]}}), each field they name marked aria-invalid.
  const showRefusal = (form, error) => {
    const text = [error.message];
    for (const [field, messages] of Object.entries({ ...error.errors, ...error.errors.data })) {
      if (!Array.isArray(messages)) continue;
      text.push(`${field}: ${messages.join(" ")}`);
      const input = dom("querySelector", form, `[name="${CSS.escape(field)}"]`);
      input?.setAttribute("aria-invalid", "true");
    }
    show(form, "error", text.join(" "), { error });
  };

  const submit = (event) => {
    const form = event.target;
    if (event.defaultPrevented || !(form instanceof HTMLFormElement)) return;
    if (attr(form, "event") == null) return; // not one of ours: the browser posts it
    event.preventDefault();
    if (attr(form, "state") === "sending") return; // a double click sends once
    // The fields as the event's data: text only (not files), a repeated name as a list; "name"
    // (the event's name) and "next" (where a post without JavaScript goes on to) are not data.
    const fields = new FormData(form, event.submitter);
    const data = {};
    for (const [field, value] of fields) {
      if (typeof value !== "string" || field === "name" || field === "next") continue;
      data[field] = Object.hasOwn(data, field) ? [].concat(data[field], value) : value;
    }
    for (const input of dom("querySelectorAll", form, "[aria-invalid]")) {
      input.removeAttribute("aria-invalid"); // the last try's marks
    }
    show(form, "sending", "Sending…");
    createClient({ endpoint: dom("getAttribute", form, "action") || location.href })
      .send(attr(form, "event") || fields.get("name") || undefined, data)
      .then(
        (ids) => show(form, "sent", attr(form, "sent") || "Sent.", { ids }),
        (error) =>
          error.queued
            ? show(form, "queued", attr(form, "queued") || "Saved; it will be sent later.", { error })
            : showRefusal(form, error),
      );
  };

  // -- start ---------------------------------------------------------------------------------
  if (root.document) {
    document.addEventListener("submit", submit);
    // Queues left by earlier pages of this site resume now (after a module's configure()).
    setTimeout(() => {
      for (const key of storage.keys(PREFIX)) {
        createClient({ endpoint: key.slice(PREFIX.length).split(" ")[0] });
      }
    });
  }

  root.InngestGateway = {
    send: (...args) => createClient().send(...args),
    flush: () => createClient().flush(),
    createClient,
    configure: (options) => Object.assign(defaults, options),
    backoff,
    GatewayError,
  };
})(globalThis);
