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
  for (const [name, value] of Object.entries(root.document?.currentScript?.dataset || {})) {
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

  // A client id: a random UUID, or (outside secure contexts, which lack randomUUID) 128 random
  // bits in hex.
  const uuid = () =>
    crypto.randomUUID
      ? crypto.randomUUID()
      : crypto.getRandomValues(new Uint8Array(16)).reduce((id, byte) => id + (byte + 256).toString(16).slice(1), "");

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
    // A failure without an answer is never final (it is retried, then "timeout"), so every
    // error but that one has a status; an answer that is not the envelope is an "http_error".
    constructor(status, body, events = [], queued = false) {
      super(body.message || `HTTP ${status}`);
      const code = body.code || "http_error";
      Object.assign(this, { name: "GatewayError", status, code, errors: body.errors || {}, requestId: body.request_id || null, events, queued });
    }
  }

  const clients = new Map();
  const bytes = (text) => new Blob([text]).size;
  let keepaliveBytes = 0; // shared by every client of the page, as the browser counts it
  let last = 0;
  let leaving = false; // between pagehide and pageshow: a send then is the page's last word
  addEventListener("pagehide", () => (leaving = true));
  addEventListener("pageshow", () => (leaving = false));

  function createClient(options = {}) {
    const endpoint = new URL(options.endpoint || defaults.endpoint, location.href).href;
    if (clients.has(endpoint)) return clients.get(endpoint);
    // The page's poster tag (data-poster) is for the page's own endpoint; another service
    // could not match it, so other endpoints get one only when given it.
    const own = endpoint === new URL(defaults.endpoint, location.href).href;
    const config = { ...defaults, poster: own ? defaults.poster : "", ...options };
    const prefix = `${PREFIX}${endpoint} `;
    // The session cookie goes along to this site's own service, and to another origin's only
    // when that service lists this page's origin in TRUSTED_ORIGINS (CORS with credentials).
    const credentials = new URL(endpoint).origin === location.origin ? "same-origin" : "include";
    const waiting = new Map(); // key -> [resolve, reject] of this page's sends
    const inflight = new Map(); // key -> whether its request is a keepalive one
    let running = null;
    let again = false;
    let timer = 0;
    let attempt = 0;
    let until = 0; // retries stop here (the latest send's budget), until the next send or "online"
    let notBefore = 0; // no request before this (backoff, Retry-After), but at pagehide
    let offline = false; // the last try got no answer at all
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
      if (answer?.ids || answer?.failure) finish(key, answer.ids, answer.failure);
    });

    // The oldest groups not in flight (at pagehide: not in a keepalive request, which outlives
    // the page), up to maxBatch events (a larger group goes alone) and, when `room` is given,
    // that many bytes (a keepalive request's budget).
    const next = (room) => {
      const batch = [];
      let count = 0;
      for (const key of stored(prefix)) {
        const group = !(room ? inflight.get(key) : inflight.has(key)) && read(key);
        if (!group?.events) continue;
        count += group.events.length;
        if (room) room -= bytes(JSON.stringify(group.events)); // measured only at pagehide
        // One request, one poster: events queued for another poster go in a request of their own.
        if (batch.length && (solo || count > config.maxBatch || room < 0 || group.p !== batch[0].p)) break;
        batch.push({ key, events: group.events, p: group.p });
      }
      return batch;
    };

    // Post a batch: resolves to true when it should be tried again. Rescuing (the page is
    // going away), only a keepalive request will do, and `false` says it would not fit.
    const post = (batch, rescuing) => {
      const events = batch.flatMap((group) => group.events);
      const body = JSON.stringify(events.length === 1 ? events[0] : events);
      const size = bytes(body);
      // After a keepalive request got no answer, the next one is plain: other scripts of the
      // page may hold the keepalive budget, which the browser enforces by failing the fetch.
      const keepalive = (rescuing || !plain) && keepaliveBytes + size <= KEEPALIVE_BYTES;
      if (rescuing && !keepalive) return false;
      if (keepalive) keepaliveBytes += size;
      for (const group of batch) inflight.set(group.key, keepalive);
      let status = 0;
      let wait = 0;
      return fetch(endpoint, {
        method: "POST",
        body,
        keepalive, // outlives the page: a click that navigates away still sends its event
        credentials,
        // A request that hangs must not hold the queue (and its lock) for ever.
        signal: AbortSignal.timeout?.(30000),
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
            attempt = 0;
            if (solo) solo--;
            return;
          }
          // No answer, a 2xx that is not the service's, the service's 429 or 503, or any
          // other 408, 429 or 5xx page (a proxy's, a CDN's): worth another try, not before
          // the backoff and the server's Retry-After.
          if (status < 300 || (answer.code ? status === 429 || status === 503 : status > 499 || status === 408 || status === 429)) {
            offline = !status;
            notBefore = Date.now() + backoff(attempt++, wait, config);
            return true;
          }
          // A refusal naming events (field errors), or of a body too large, may be about one
          // send of the batch: each is sent alone to learn which. Any other is for them all.
          if (batch.length > 1 && (status === 413 || Object.keys(answer.errors || {}).length)) {
            solo = batch.length;
            return;
          }
          for (const group of batch) settle(group.key, null, [status, answer, group.events]);
          attempt = 0;
          if (solo) solo--;
        });
    };

    const loop = async () => {
      while (navigator.onLine !== false && Date.now() >= notBefore) {
        const batch = next();
        if (!batch.length || (await post(batch))) break;
      }
      again = false; // a send during a failed try waits for the retry
      wait();
    };
    // Set the timer for the next try, if one is due within the budget.
    const wait = () => {
      clearTimeout(timer);
      timer = 0;
      const delay = notBefore - Date.now();
      if (delay > 0 && notBefore <= until && pending()) timer = setTimeout(() => ((timer = 0), flush()), delay);
    };

    // Send what is queued now, one run at a time across the site's tabs (Web Locks). The
    // promise settles when the queue is empty or waits for a retry.
    const flush = () => {
      if (running) return (again = true), running;
      clearTimeout(timer);
      timer = 0;
      return (running = (navigator.locks?.request(prefix, loop) || loop()).finally(() => {
        running = null;
        if (again) return flush();
      }));
    };
    // A new send, or a reason to think the service is back: send now, or when the backoff
    // and the server's Retry-After allow.
    const kick = (budget = config.budget) => {
      until = Math.max(until, Date.now() + budget);
      if (!timer) Date.now() < notBefore ? wait() : flush();
    };
    // The page is going away (or may be killed in the background): whatever is queued and not
    // in a keepalive request goes now in keepalive requests, as far as their 64 KiB allow. At
    // pagehide this is the last chance; a hidden page waits for its backoff like any other.
    const rescue = (leaving) => {
      if (navigator.onLine === false || !(leaving || Date.now() >= notBefore)) return;
      // next() sized each batch to fit; only a first send larger than what is left stops it.
      for (let batch; (batch = next(KEEPALIVE_BYTES - keepaliveBytes)).length && post(batch, true); );
    };
    addEventListener("online", () => {
      if (offline) notBefore = attempt = timer = 0; // that backoff was the connection's, not the server's
      kick();
    });
    addEventListener("pageshow", () => kick());
    addEventListener("pagehide", () => rescue(true));
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
        const key = prefix + (1e15 + last) + uuid().slice(0, 8); // sorts by time: 16 digits
        put(key, JSON.stringify({ events, p: config.poster }));
        waiting.set(key, [resolve, reject]);
        const budget = options.budget || config.budget;
        setTimeout(() => {
          const message = "Not acknowledged in time; still queued.";
          if (waiting.has(key)) finish(key, null, [0, { code: "timeout", message }, events, true]);
        }, budget);
        kick(budget);
        // A send while the page is hidden (from a pagehide listener, say) may be its last
        // chance: it goes now, not after the lock is granted.
        if (document.visibilityState === "hidden") rescue(leaving);
      });
    };

    // How many sends (groups of events) are queued for this endpoint, by any tab of the site.
    const pending = () => stored(prefix).length;
    // flush() of the API tries now, whatever the backoff says (a "retry now" button, say).
    const client = { endpoint, send, flush: () => ((notBefore = 0), flush()), pending };
    clients.set(endpoint, client);
    kick();
    return client;
  }

  // -- forms: <form data-inngest-event="app/signup" action="/api" method="post"> posts through
  // the client and shows the answer in place; without JavaScript it posts and gets the 303.
  // The form's own DOM methods are called from Element.prototype: a field named "action",
  // "dataset" or "querySelector" hides the form's property of that name.
  const dom = (name, node, ...args) => Element.prototype[name].call(node, ...args);
  const attr = (form, name) => dom("getAttribute", form, `data-inngest-${name}`);
  const show = (form, state, text, detail) => {
    dom("setAttribute", form, "data-inngest-state", state);
    let out = dom("querySelector", form, "[data-inngest-result]");
    if (!out) {
      out = dom("appendChild", form, document.createElement("output")); // role "status"
      out.setAttribute("data-inngest-result", "");
    }
    out.textContent = text;
    dom("dispatchEvent", form, new CustomEvent(`inngest:${state}`, { bubbles: true, detail }));
  };
  const submit = (event) => {
    const form = event.target;
    if (event.defaultPrevented || !(form instanceof HTMLFormElement) || attr(form, "event") == null) return;
    event.preventDefault();
    if (attr(form, "state") === "sending") return; // a double click sends once
    const fields = new FormData(form, event.submitter);
    const data = {};
    for (const [field, value] of fields) {
      if (typeof value !== "string" || field === "name" || field === "next") continue;
      data[field] = Object.hasOwn(data, field) ? [].concat(data[field], value) : value;
    }
    for (const field of dom("querySelectorAll", form, "[aria-invalid]")) field.removeAttribute("aria-invalid");
    show(form, "sending", "Sending…");
    createClient({ endpoint: dom("getAttribute", form, "action") || location.href })
      .send(attr(form, "event") || fields.get("name") || undefined, data)
      .then(
        (ids) => show(form, "sent", attr(form, "sent") || "Sent.", { ids }),
        (error) => {
          if (error.queued) return show(form, "queued", attr(form, "queued") || "Saved; it will be sent later.", { error });
          // The field errors of a form's one event: {name: [...]} and {data: {field: [...]}}.
          const text = [error.message];
          for (const [field, list] of Object.entries({ ...error.errors, ...error.errors.data })) {
            if (!Array.isArray(list)) continue;
            text.push(`${field}: ${list.join(" ")}`);
            const input = dom("querySelector", form, `[name="${CSS.escape(field)}"]`);
            input?.setAttribute("aria-invalid", "true");
          }
          show(form, "error", text.join(" "), { error });
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
