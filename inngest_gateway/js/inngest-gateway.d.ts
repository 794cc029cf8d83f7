// Types of the inngest-gateway browser client (inngest-gateway.js / inngest-gateway.mjs).
//
// As a module:  import { send } from "/inngest-gateway.mjs"  (save this file beside it as
//               inngest-gateway.d.mts, or map the module's name to it in tsconfig "paths")
// As a script:  window.InngestGateway.send(...)               (this file declares the global)

/** An event as the page sends it; the service adds `data.user` and `data.request`. */
export interface GatewayEvent {
  /** The event name; the service's INNGEST_GATEWAY_API_DEFAULT_EVENT when left out. */
  name?: string;
  data?: Record<string, unknown> | null;
  /** The client's key for this event, made with crypto.randomUUID() when left out. The
   * service turns it into the event id, the same for the same poster on every retry. */
  id?: string;
  /** Milliseconds since the epoch; set to the time of `send()` when left out. The service
   * refuses (422) one older than its INNGEST_GATEWAY_API_TS_MAX_AGE (7 days by default) or further ahead of
   * its clock than INNGEST_GATEWAY_API_TS_MAX_SKEW (5 minutes). */
  ts?: number;
  v?: string;
}

export interface SendOptions {
  /** How long this send's promise waits, retries included, in milliseconds (default:
   * the client's `budget`). Past it the promise rejects with `queued: true`; the events
   * stay queued and are sent when the service can be reached. */
  budget?: number;
}

export interface ClientOptions {
  /** Where events are posted (default "/api", or the script tag's data-endpoint). */
  endpoint?: string;
  /** Most events in one request: the service's INNGEST_GATEWAY_API_MAX_BATCH (default 100). */
  maxBatch?: number;
  /** Default retry budget of a send, in milliseconds (default 30000). */
  budget?: number;
  /** First retry delay and the longest one, in milliseconds (defaults 500 and 30000). */
  base?: number;
  cap?: number;
  /** Who is viewing the page, as the service tags them (the script tag's data-poster, from
   * `inngest_gateway_script()`): stored with each event, so that the service refuses
   * (409 poster_changed) events queued for someone else than who is logged in. The page's
   * tag goes only with the page's own endpoint; another endpoint's client has none unless
   * given one here. */
  poster?: string;
}

export interface Client {
  /** The absolute URL this client posts to. */
  readonly endpoint: string;
  /** Queue one event and send it; resolves to the event ids the service answered. */
  send(name: string | undefined, data?: Record<string, unknown> | null, options?: SendOptions & { id?: string }): Promise<string[]>;
  /** Queue several events, sent together in this order; resolves to their ids, in order. */
  send(events: GatewayEvent[], options?: SendOptions): Promise<string[]>;
  /** Try to send what is queued now, whatever the backoff says (a "retry now" button). */
  flush(): Promise<void>;
  /** How many sends are queued for this endpoint (by any tab of this site). */
  pending(): number;
}

/** Why a send did not go through: the service's error envelope, or the client's own. */
export declare class GatewayError extends Error {
  readonly name: "GatewayError";
  /** The HTTP status; 0 for `timeout` (no answer came in time: network errors, 503s and the
   * like are retried, never final). */
  readonly status: number;
  /** The envelope's code (`validation_failed`, `login_required`, `poster_changed`, ...),
   * `timeout` (still queued, not yet acknowledged) or `http_error` (an answer without an
   * envelope). */
  readonly code: string;
  /** Field errors: for one event its fields' messages; for several, keyed by index. */
  readonly errors: Record<string, unknown>;
  readonly requestId: string | null;
  /** The events the error is about, ids included (to send again after a login, say). */
  readonly events: GatewayEvent[];
  /** True when the events are still queued and will be sent later. */
  readonly queued: boolean;
}

/** `send` of the default client (the default endpoint). */
export declare function send(name: string | undefined, data?: Record<string, unknown> | null, options?: SendOptions & { id?: string }): Promise<string[]>;
export declare function send(events: GatewayEvent[], options?: SendOptions): Promise<string[]>;
/** `flush` of the default client. */
export declare function flush(): Promise<void>;
/** The client of an endpoint: one per endpoint and page, made on first use. */
export declare function createClient(options?: ClientOptions): Client;
/** Change the defaults of clients made from now on (the default client included). */
export declare function configure(options: ClientOptions): ClientOptions;
/** Milliseconds before retry number `attempt + 1`, never less than `retryAfter`. */
export declare function backoff(attempt: number, retryAfter?: number, options?: { base?: number; cap?: number }, random?: () => number): number;

declare const InngestGateway: {
  send: typeof send;
  flush: typeof flush;
  createClient: typeof createClient;
  configure: typeof configure;
  backoff: typeof backoff;
  GatewayError: typeof GatewayError;
};
export default InngestGateway;

declare global {
  interface Window {
    InngestGateway: typeof InngestGateway;
  }
  interface HTMLElementEventMap {
    /** On a `data-inngest-event` form: sent, queued for later, refused. */
    "inngest:sending": CustomEvent<undefined>;
    "inngest:sent": CustomEvent<{ ids: string[] }>;
    "inngest:queued": CustomEvent<{ error: GatewayError }>;
    "inngest:error": CustomEvent<{ error: GatewayError }>;
  }
  interface WindowEventMap {
    /** Events queued by an earlier page that the service refused: nobody awaits them. */
    "inngest-gateway:rejected": CustomEvent<GatewayError>;
  }
}
