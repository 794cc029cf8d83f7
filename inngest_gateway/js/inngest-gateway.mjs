// inngest-gateway browser client as an ES module:
//   import { send, createClient, configure } from "/inngest-gateway.mjs";
// It runs inngest-gateway.js (one copy per page, shared with a classic <script> of it) and
// exports what that defines. Types: inngest-gateway.d.ts.
import "./inngest-gateway.js";

const gateway = globalThis.InngestGateway;
export const { send, flush, createClient, configure, backoff, GatewayError } = gateway;
export default gateway;
