// Compiled by tests/test_client_build.py with `tsc -p tests/js`: the client's uses shown in
// README.md and docs/browser-client.md type-check against inngest-gateway.d.ts, and misuses
// do not.
import InngestGateway, { configure, createClient, GatewayError, send, type GatewayEvent } from "inngest-gateway";

export async function module(): Promise<string> {
  configure({ endpoint: "/api", maxBatch: 100, budget: 30_000 });
  const ids: string[] = await send("app/signup", { plan: "pro" }, { id: "signup-17", budget: 10_000 });
  const events: GatewayEvent[] = [{ name: "app/a", data: { n: 1 } }, { name: "app/b", ts: Date.now() }];
  const more = await createClient({ endpoint: "https://gateway.example.com/api" }).send(events);
  try {
    await send("app/x", null);
  } catch (error) {
    if (error instanceof GatewayError && !error.queued) {
      const fields: Record<string, unknown> = error.errors;
      return `${error.status} ${error.code} ${error.requestId ?? ""} ${Object.keys(fields)} ${error.events.length}`;
    }
  }
  const client = createClient();
  await client.flush();
  return [...ids, ...more, String(client.pending()), client.endpoint, String(InngestGateway.backoff(2))].join();
}

export function script(form: HTMLFormElement): void {
  window.InngestGateway.send("app/clicked", { at: Date.now() }).catch(() => undefined);
  form.addEventListener("inngest:sent", (event) => console.log(event.detail.ids.join()));
  form.addEventListener("inngest:error", (event) => console.log(event.detail.error.code));
  window.addEventListener("inngest-gateway:rejected", (event) => console.log(event.detail.events));
}

export async function misuses(): Promise<void> {
  // @ts-expect-error: the ids are strings
  const wrong: number[] = await send("app/x");
  // @ts-expect-error: a batch takes no per-call id
  await send([{ name: "app/y" }], { id: "nope" });
  // @ts-expect-error: events are objects
  await send(["app/z"]);
  // @ts-expect-error: no such option
  createClient({ endpointUrl: "/api" });
  void wrong;
}
