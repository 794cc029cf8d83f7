/*! inngest-gateway browser client: events through the gateway's POST /api, never dropped. */
// A classic script: <script src="/inngest-gateway.js" data-endpoint="/api" data-max-batch="100"
// defer> sets window.InngestGateway. inngest-gateway.mjs imports this file as a module and
// exports the same functions. No dependencies and no build step.
//
// Every event is written to localStorage before it is sent, with a client id made once, and
// removed only when the service has answered with its id: a 503, a 429, a lost connection, a
// reload or a crash of the tab leave it queued, and it goes (oldest first, in batches) when
// the service can be reached again. Retries carry the same id, which the service turns into
// the same event id for the same poster, so Inngest drops any repeat.
((root) => {
  "use strict";
  if (root.InngestGateway) return; // loaded twice (as a script and as a module): one queue

  const PREFIX = "inngest-gateway ";
  const KEEPALIVE_BYTES = 65536; // what a page may have in flight in keepalive requests
  const defaults = { endpoint: "/api", maxBatch: 100, budget: 30000, base: 500, cap: 30000, poster: "" };
  const tag = root.document && document.currentScript;
  for (const [name, value] of Object.entries(tag ? tag.dataset : {})) {
    if (name in defaults) defaults[name] = typeof defaults[name] === "string" ? value : Number(value);
  }

  // -- the queue's storage: localStorage, else (missing, refused or full) this page's memory
  const spill = new Map();
  let store = null;
  try {
    store = root.localStorage;
  } catch {} // storage disabled: the queue lives as long as the page
  const put = (key, value) => {
    try {
      store.setItem(key, value);
    } catch {
      spill.set(key, value);
    }
  };
  const drop = (key) => {
    spill.delete(key);
    try {
      store.removeItem(key);
    } catch {}
  };
  const read = (key) => {
    try {
      return JSON.parse(spill.has(key) ? spill.get(key) : store.getItem(key));
    } catch {
      return null;
    }
  };
  const stored = (prefix) => {
    const keys = [...spill.keys()];
    try {
      for (let i = 0; i < store.length; i++) keys.push(store.key(i));
    } catch {}
    return keys.filter((key) => key && key.startsWith(prefix)).sort();
  };

  const uuid = () =>
    crypto.randomUUID
      ? crypto.randomUUID() // secure contexts only (https, localhost)
      : `${1e7}-${1e3}-${4e3}-${8e3}-${1e11}`.replace(/[018]/g, (c) =>
          (c ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (c / 4)))).toString(16),
        );

  // Milliseconds to wait before try number `attempt + 1`: exponential from `base` up to `cap`,
  // half of it random (so that many pages do not come back at once), never sooner than the
  // server's Retry-After.
  const backoff = (attempt, retryAfter = 0, { base = defaults.base, cap = defaults.cap } = {}, random = Math.random) => {
    const ceiling = Math.min(cap, base * 2 ** attempt);
    return Math.max(retryAfter, ceiling / 2 + (random() * ceiling) / 2);
  };
  // Retry-After in milliseconds: delay-seconds or an HTTP date; 0 when absent or unreadable.
  const retryAfter = (value) => {
    const seconds = Number(value);
    return seconds >= 0 ? seconds * 1000 : Math.max(0, Date.parse(value) - Date.now()) || 0;
  };

  class GatewayError extends Error {
    constructor(status, body, events, queued) {
      body = body || {};
      super(body.message || (status ? `The service answered HTTP ${status}.` : "The service could not be reached."));
      this.name = "GatewayError";
      this.status = status;
      this.code = body.code || (status ? "http_error" : "network_error");
      this.errors = body.errors || {};
      this.requestId = body.request_id || null;
      this.events = events || [];
      this.queued = !!queued;
    }
  }

  const clients = new Map();
  let keepaliveBytes = 0; // shared by every client of the page, as the browser counts it
  let last = 0;

  function createClient(options) {
    const config = { ...defaults, ...options };
    const endpoint = new URL(config.endpoint, location.href).href;
    if (clients.has(endpoint)) return clients.get(endpoint);
    const prefix = `${PREFIX}${endpoint} `;
    // The session cookie goes along to this site's own service, and to another origin's only
    // when that service lists this page's origin in TRUSTED_ORIGINS (CORS with credentials).
    const credentials = new URL(endpoint).origin === location.origin ? "same-origin" : "include";
    const waiting = new Map(); // key -> [resolve, reject] of this page's sends
    const inflight = new Set();
    let running = null;
    let again = false;
    let timer = 0;
    let attempt = 0;
    let until = 0; // retries stop here (the latest send's budget), until the next send or "online"
    let solo = 0; // groups still to send one per request, after a batch was refused
    let plain = false;

    // Settle a group in this page, and in the page that sent it: another tab may be the one
    // flushing the queue; it learns the answer from the "storage" event of this write.
    const settle = (key, ids, failure) => {
      put(key, JSON.stringify({ ids, failure }));
      drop(key);
      finish(key, ids, failure);
    };
    const finish = (key, ids, failure) => {
      const promise = waiting.get(key);
      const error = failure && new GatewayError(...failure);
      waiting.delete(key);
      if (promise) promise[ids ? 0 : 1](ids || error);
      else if (error) root.dispatchEvent(new CustomEvent("inngest-gateway:rejected", { detail: error }));
    };
    addEventListener("storage", ({ key, newValue }) => {
      const answer = waiting.has(key) && newValue && JSON.parse(newValue);
      if (answer && (answer.ids || answer.failure)) finish(key, answer.ids, answer.failure);
    });

    // The oldest groups not in flight, up to maxBatch events (a larger group goes alone) and,
    // when `room` is given, about that many bytes (a keepalive request's budget).
    const next = (room = Infinity) => {
      const batch = [];
      let count = 0;
      for (const key of stored(prefix)) {
        const group = !inflight.has(key) && read(key);
        if (!group || !group.events) continue;
        count += group.events.length;
        room -= JSON.stringify(group.events).length;
        // One request, one poster: events queued for another poster go in a request of their own.
        if (batch.length && (solo || count > config.maxBatch || room < 0 || group.p !== batch[0].p)) break;
        batch.push({ key, events: group.events, p: group.p });
      }
      return batch;
    };

    // Post a batch: resolves to undefined when it is settled, or to the server's Retry-After
    // when it should be tried again. Rescuing (the page is going away), only a keepalive
    // request will do, and `false` says the budget for those is spent.
    const post = (batch, rescuing) => {
      const events = batch.flatMap((group) => group.events);
      const body = JSON.stringify(events.length === 1 ? events[0] : events);
      const size = new Blob([body]).size;
      // After a keepalive request got no answer, the next one is plain: other scripts of the
      // page may hold the keepalive budget, which the browser enforces by failing the fetch.
      const keepalive = (rescuing || !plain) && keepaliveBytes + size <= KEEPALIVE_BYTES;
      if (rescuing && !keepalive) return false;
      if (keepalive) keepaliveBytes += size;
      for (const group of batch) inflight.add(group.key);
      let status = 0;
      let wait = 0;
      return fetch(endpoint, {
        method: "POST",
        body,
        keepalive, // outlives the page: a click that navigates away still sends its event
        credentials,
        // JSON is answered in JSON, errors too. The poster tag (the page's data-poster) makes
        // the service refuse events queued by someone else than who is logged in now.
        headers: { "Content-Type": "application/json", ...(batch[0].p && { "X-Inngest-Poster": batch[0].p }) },
      })
        .then((response) => {
          status = response.status;
          wait = retryAfter(response.headers.get("Retry-After"));
          return response.json();
        })
        .catch(() => ({}))
        .then((answer) => {
          answer = answer || {};
          plain = keepalive && !status;
          if (keepalive) keepaliveBytes -= size;
          for (const group of batch) inflight.delete(group.key);
          const ids = answer.ids;
          if (status > 199 && status < 300 && Array.isArray(ids) && ids.length === events.length) {
            let at = 0;
            for (const group of batch) settle(group.key, ids.slice(at, (at += group.events.length)));
            if (solo) solo--;
            return;
          }
          // No answer, a 2xx that is not the service's, 429, 503, or a proxy's 408/502/504:
          // worth another try. Any other refusal is final for what was refused.
          if (status < 300 || status === 429 || status === 503 || (!answer.code && [408, 502, 504].includes(status))) {
            return wait;
          }
          if (batch.length > 1) {
            solo = batch.length; // one group's refusal must not sink the others: send each alone
            return;
          }
          settle(batch[0].key, null, [status, answer, events]);
          if (solo) solo--;
        });
    };

    const loop = async () => {
      for (let batch; navigator.onLine !== false && (batch = next()).length; attempt = 0) {
        const wait = await post(batch);
        if (wait !== undefined) {
          const delay = backoff(attempt++, wait, config);
          if (Date.now() + delay <= until) timer = setTimeout(() => ((timer = 0), flush()), delay);
          break;
        }
      }
      again = false; // a send during a failed try waits for the retry; "online" does not
    };

    // Send what is queued now, one run at a time across the site's tabs (Web Locks). The
    // promise settles when the queue is empty or waits for a retry.
    const flush = () => {
      if (running) return (again = true), running;
      clearTimeout(timer);
      timer = 0;
      return (running = (navigator.locks ? navigator.locks.request(prefix, loop) : loop()).finally(() => {
        running = null;
        if (again) return flush();
      }));
    };
    // A new send, or a reason to think the service is back: retry from the first delay,
    // unless the server asked to wait (a retry is already set for then).
    const kick = (budget = config.budget) => {
      until = Math.max(until, Date.now() + budget);
      if (!timer) flush();
    };
    // The page is going away (or may be killed in the background): whatever is queued and not
    // in flight goes now in keepalive requests, as far as their 64 KiB budget allows.
    const rescue = () => {
      for (let batch; navigator.onLine !== false && (batch = next(KEEPALIVE_BYTES - keepaliveBytes)).length && post(batch, true); );
    };
    addEventListener("online", () => {
      clearTimeout(timer);
      timer = attempt = 0;
      kick();
    });
    addEventListener("pageshow", () => kick());
    addEventListener("pagehide", rescue);
    document.addEventListener("visibilitychange", () => (document.hidden ? rescue() : kick()));

    const send = (name, data, options) => {
      const many = Array.isArray(name);
      options = (many ? data : options) || {};
      return new Promise((resolve, reject) => {
        const events = (many ? name : [{ name, data, id: options.id }]).map((event) => ({
          ...event,
          id: event.id || uuid(),
          ts: event.ts || Date.now(), // when it happened, not when the queue got it through
        }));
        last = Math.max(Date.now(), last + 1);
        const key = prefix + String(last).padStart(15, "0") + uuid().slice(0, 8);
        put(key, JSON.stringify({ events, p: config.poster }));
        waiting.set(key, [resolve, reject]);
        const budget = options.budget || config.budget;
        setTimeout(() => {
          const message = "Not acknowledged in time; the events stay queued.";
          if (waiting.has(key)) finish(key, null, [0, { code: "timeout", message }, events, true]);
        }, budget);
        kick(budget);
        // A send while the page is hidden (from a pagehide listener, say) may be its last
        // chance: it goes now, not after the lock is granted.
        if (document.visibilityState === "hidden") rescue();
      });
    };

    // How many sends (groups of events) are queued for this endpoint, by any tab of the site.
    const pending = () => stored(prefix).filter((key) => (read(key) || {}).events).length;
    const client = { endpoint, send, flush, pending };
    clients.set(endpoint, client);
    kick();
    return client;
  }

  // -- forms: <form data-inngest-event="app/signup" action="/api" method="post"> posts through
  // the client and shows the answer in place; without JavaScript it posts and gets the 303.
  const messages = (errors, path) =>
    Object.entries(errors).flatMap(([field, value]) =>
      Array.isArray(value) && typeof value[0] === "string"
        ? [`${path}${field}: ${value.join(" ")}`]
        : value && typeof value === "object"
          ? messages(value, `${path}${field}.`)
          : [],
    );
  const show = (form, state, text, detail) => {
    form.dataset.inngestState = state;
    let out = form.querySelector("[data-inngest-result]");
    if (!out) {
      out = form.appendChild(document.createElement("output"));
      out.setAttribute("data-inngest-result", "");
    }
    out.setAttribute("role", "status");
    out.textContent = text;
    form.dispatchEvent(new CustomEvent(`inngest:${state}`, { bubbles: true, detail }));
  };
  const submit = (event) => {
    const form = event.target;
    if (event.defaultPrevented || !form.matches || !form.matches("form[data-inngest-event]")) return;
    event.preventDefault();
    if (form.dataset.inngestState === "sending") return; // a double click sends once
    const fields = new FormData(form, event.submitter);
    const data = {};
    for (const [field, value] of fields) {
      if (typeof value !== "string" || field === "name" || field === "next") continue;
      data[field] = field in data ? [].concat(data[field], value) : value;
    }
    for (const field of form.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
    show(form, "sending", "Sending…");
    // getAttribute: a field named "action" would hide the form's own `action` property
    createClient({ endpoint: Element.prototype.getAttribute.call(form, "action") || location.href })
      .send(form.dataset.inngestEvent || fields.get("name") || undefined, data)
      .then(
        (ids) => show(form, "sent", form.dataset.inngestSent || "Sent.", { ids }),
        (error) => {
          if (error.queued) return show(form, "queued", form.dataset.inngestQueued || "Saved: it will be sent when the service can be reached.", { error });
          const errors = error.errors || {};
          for (const field of Object.keys({ ...errors, ...errors.data })) {
            const input = form.elements[field];
            if (input && input.setAttribute) input.setAttribute("aria-invalid", "true");
          }
          const text = [error.message, ...messages(errors, "")].join(" ").replace(/\bdata\./g, "");
          show(form, "error", text, { error });
        },
      );
  };

  if (root.document) {
    document.addEventListener("submit", submit);
    // Queues left by earlier pages of this site resume now (after a module's configure()).
    setTimeout(() => {
      for (const key of stored(PREFIX)) createClient({ endpoint: key.slice(PREFIX.length).split(" ")[0] });
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
