// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * What every RPC passes before a handler sees it: the bearer token, checked on the headers
 * before any byte of the body is read (Connect's request gate), a body cap per method, and —
 * once the messages are parsed — the user a token is bound to.
 *
 * @module
 */
import { constants as http2constants } from "node:http2";
import type { DescMessage, DescMethod, DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  type HandlerContext,
  type Interceptor,
  type ServiceImpl,
} from "@connectrpc/connect";
import { CREDENTIAL_MESSAGES, type CredentialProblem, type TokenSet } from "./_tokens.ts";

/** Health checks come from load balancers that carry no credentials. */
export const OPEN_SERVICES: ReadonlySet<string> = new Set(["grpc.health.v1.Health"]);

/** Services only an admin token opens (never a tenant's); off without admin tokens. */
export const ADMIN_SERVICES: ReadonlySet<string> = new Set(["valise.v1.AdminService"]);

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * The largest request message of each method that is not a stream of data, in bytes. Methods
 * not listed here and not in {@linkcode BULK_METHODS} get 4 MiB: Spark's methods Valise does
 * not implement are refused at that size rather than read up to the server-wide maximum.
 */
export const METHOD_READ_MAX_BYTES: Readonly<Record<string, number>> = {
  "spark.connect.SparkConnectService/Config": 4 * MiB,
  // Plans carry the client's pickled UDFs (with what they capture) and local data up to its
  // cache threshold (1 MiB): larger data comes as cache/ artifacts.
  "spark.connect.SparkConnectService/ExecutePlan": 32 * MiB,
  "spark.connect.SparkConnectService/AnalyzePlan": 32 * MiB,
  "spark.connect.SparkConnectService/ArtifactStatus": 4 * MiB,
  "spark.connect.SparkConnectService/ReleaseSession": 64 * KiB,
  "spark.connect.SparkConnectService/CloneSession": 64 * KiB,
  "valise.v1.StoreService/HasBlobs": 4 * MiB,
  // 10000 artifacts (the default session maximum) with 1 KiB names fit.
  "valise.v1.StoreService/AttachArtifacts": 16 * MiB,
  "valise.v1.SessionService/ListArtifacts": 64 * KiB,
  // As many names as AttachArtifacts may add.
  "valise.v1.SessionService/RemoveArtifacts": 16 * MiB,
  "valise.v1.AdminService/ListSessions": 64 * KiB,
  "valise.v1.AdminService/ListNodes": 64 * KiB,
  // A requirement set is at most 64 KiB of text (MAX_REQUIREMENTS_TEXT).
  "valise.v1.PipService/Install": 256 * KiB,
  "valise.v1.PipService/Uninstall": 256 * KiB,
  "valise.v1.PipService/List": 64 * KiB,
  // Stdin as it is typed or piped: the client sends it in small pieces (64 KiB), and the server
  // keeps at most one message of a run's stdin while the program does not read.
  "valise.v1.WorkerService/RunInteractive": 1 * MiB,
  "grpc.health.v1.Health/Check": 64 * KiB,
  "grpc.health.v1.Health/Watch": 64 * KiB,
};

/**
 * Methods whose messages carry artifact bytes, stdin or Arrow data: they take the server-wide
 * `readMaxBytes` per message (AddArtifacts and Apply streams are capped per message, not per
 * call).
 */
export const BULK_METHODS: ReadonlySet<string> = new Set([
  "spark.connect.SparkConnectService/AddArtifacts",
  "valise.v1.WorkerService/Run",
  "valise.v1.WorkerService/Apply",
]);

/**
 * The body cap of a method: its own, never above the server-wide maximum.
 *
 * @param method The method.
 * @param readMaxBytes The server-wide maximum message size.
 * @returns Bytes.
 */
export function methodReadMaxBytes(method: DescMethod, readMaxBytes: number): number {
  const key = `${method.parent.typeName}/${method.name}`;
  if (BULK_METHODS.has(key)) return readMaxBytes;
  return Math.min(readMaxBytes, METHOD_READ_MAX_BYTES[key] ?? 4 * MiB);
}

/**
 * A request gate that refuses a call without a valid token from its headers alone, so a
 * tokenless caller cannot make the server read (and buffer) its body. Connect answers in the
 * caller's protocol: gRPC status 16 in trailers, gRPC-web likewise, Connect HTTP 401 with
 * `{"code":"unauthenticated"}`.
 *
 * @param tokens The accepted tokens.
 * @param onRefuse Told of each refusal (for the log and metrics), by method and problem.
 * @returns The gate.
 */
export function authGate(
  tokens: TokenSet,
  onRefuse?: (method: string, problem: CredentialProblem) => void,
): (ctx: HandlerContext) => void {
  return (ctx) => {
    if (OPEN_SERVICES.has(ctx.service.typeName) || ADMIN_SERVICES.has(ctx.service.typeName)) {
      return;
    }
    const c = tokens.check(ctx.requestHeader.get("authorization"));
    if (!c.ok) {
      onRefuse?.(`${ctx.service.typeName}/${ctx.method.name}`, c.problem);
      throw new ConnectError(CREDENTIAL_MESSAGES[c.problem], Code.Unauthenticated);
    }
  };
}

/** Why a call to the admin API is refused. */
export type AdminRefusal = "DISABLED" | "TENANT_TOKEN" | CredentialProblem;

/**
 * Checks a call to the admin API: the server must have admin tokens, and the call must carry
 * one. A tenant's token is told apart (PERMISSION_DENIED), so that a tenant learns it is not an
 * operator rather than that its token is wrong.
 *
 * @param admin The admin tokens, if the admin API is on.
 * @param tenants The tenants' tokens, if any.
 * @param header The `authorization` header.
 * @returns Why it is refused, or `undefined` when it may pass.
 */
export function adminRefusal(
  admin: TokenSet | undefined,
  tenants: TokenSet | undefined,
  header: string | null,
): AdminRefusal | undefined {
  if (!admin) return "DISABLED";
  const c = admin.check(header);
  if (c.ok) return undefined;
  if (c.problem === "WRONG" && tenants?.check(header).ok) return "TENANT_TOKEN";
  return c.problem;
}

/**
 * The error of a refused admin call.
 *
 * @param r Why it is refused.
 * @returns The error: UNIMPLEMENTED when the admin API is off, PERMISSION_DENIED for a tenant's
 *   token, else UNAUTHENTICATED.
 */
export function adminRefusalError(r: AdminRefusal): ConnectError {
  switch (r) {
    case "DISABLED":
      return new ConnectError(
        "[ADMIN_API_DISABLED] The admin API is off on this server: start it with " +
          "--admin-token-file FILE to turn it on.",
        Code.Unimplemented,
      );
    case "TENANT_TOKEN":
      return new ConnectError(
        "[PERMISSION_DENIED] This is a tenant's token: the admin API needs one of the server's " +
          "admin tokens (its --admin-token-file).",
        Code.PermissionDenied,
      );
    case "MISSING":
      return new ConnectError(
        "[UNAUTHENTICATED] The admin API needs an 'authorization: Bearer <admin token>' header; " +
          "the request has none.",
        Code.Unauthenticated,
      );
    case "MALFORMED":
      return new ConnectError(CREDENTIAL_MESSAGES.MALFORMED, Code.Unauthenticated);
    case "WRONG":
      return new ConnectError(
        "[UNAUTHENTICATED] The bearer token is not one of this server's admin tokens.",
        Code.Unauthenticated,
      );
  }
}

/**
 * The request gate of the admin API: refuses from the headers alone, before any body byte is
 * read, whatever the tenants' tokens say.
 *
 * @param admin The admin tokens, if the admin API is on.
 * @param tenants The tenants' tokens, if any.
 * @param onRefuse Told of each refusal (for the log and metrics).
 * @returns The gate.
 */
export function adminGate(
  admin: TokenSet | undefined,
  tenants: TokenSet | undefined,
  onRefuse?: (method: string, error: ConnectError) => void,
): (ctx: HandlerContext) => void {
  return (ctx) => {
    const r = adminRefusal(admin, tenants, ctx.requestHeader.get("authorization"));
    if (r === undefined) return;
    const e = adminRefusalError(r);
    onRefuse?.(`${ctx.service.typeName}/${ctx.method.name}`, e);
    throw e;
  };
}

/**
 * The admin API's check again, behind its gate (defence in depth, as for tenants' tokens).
 *
 * @param admin The admin tokens, if the admin API is on.
 * @param tenants The tenants' tokens, if any.
 * @returns The interceptor.
 */
export function adminInterceptor(
  admin: TokenSet | undefined,
  tenants: TokenSet | undefined,
): Interceptor {
  return (next) => (req) => {
    if (!ADMIN_SERVICES.has(req.service.typeName)) return next(req);
    const r = adminRefusal(admin, tenants, req.header.get("authorization"));
    if (r !== undefined) throw adminRefusalError(r);
    return next(req);
  };
}

/** The parts of a `node:http2` request a refusal needs. */
interface NodeRequest {
  readonly url: string;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly stream?: { close(code?: number): void };
  on(event: "data", fn: (chunk: Uint8Array) => void): unknown;
  resume(): unknown;
}

/** A refused caller's body is read and dropped up to this much, then its stream is reset. */
export const REFUSED_BODY_DRAIN_BYTES: number = 8 * MiB;

/**
 * Wraps a `node:http2` handler so that the body of a call the gate will refuse is drained and
 * dropped as it arrives, never buffered. Deno's `node:http2` resets a stream answered before
 * its body was read, and the peer's frames still in flight then count as invalid frames: enough
 * of them (a few 60 MiB calls) and the whole connection gets GOAWAY(ENHANCE_YOUR_CALM). A
 * caller that keeps sending long after its answer is cut off.
 *
 * @param handler The handler whose request gates refuse the call.
 * @param refuses Whether the gates refuse a call to a service with this `authorization` header.
 * @returns The wrapped handler.
 */
export function discardRefusedBodies<Req extends NodeRequest, Res>(
  handler: (req: Req, res: Res) => void,
  refuses: (service: string, authorization: string | null) => boolean,
): (req: Req, res: Res) => void {
  return (req, res) => {
    const service = req.url.split("/")[1] ?? "";
    const raw = req.headers.authorization;
    if (refuses(service, typeof raw === "string" ? raw : null)) {
      let drained = 0;
      req.on("data", (chunk) => {
        drained += chunk.length;
        if (
          drained > REFUSED_BODY_DRAIN_BYTES && drained - chunk.length <= REFUSED_BODY_DRAIN_BYTES
        ) {
          req.stream?.close(http2constants.NGHTTP2_CANCEL);
        }
      });
      req.resume();
    }
    handler(req, res);
  };
}

/**
 * Registers every method of a service with its own body cap and the auth gate. Methods the
 * implementation lacks answer UNIMPLEMENTED, as `router.service` would.
 *
 * @param router The router.
 * @param service The service.
 * @param impl Its implementation.
 * @param options The server-wide maximum message size and the gate, if tokens are required.
 */
export function registerService<T extends DescService>(
  router: ConnectRouter,
  service: T,
  impl: Partial<ServiceImpl<T>>,
  options: { readMaxBytes: number; gate?: ((ctx: HandlerContext) => void) | undefined },
): void {
  for (const method of service.methods) {
    let fn = (impl as Record<string, unknown>)[method.localName];
    if (typeof fn === "function") fn = fn.bind(impl);
    else {
      const message = `${service.typeName}.${method.name} is not implemented`;
      fn = () => {
        throw new ConnectError(message, Code.Unimplemented);
      };
    }
    router.rpc(method as never, fn as never, {
      readMaxBytes: methodReadMaxBytes(method, options.readMaxBytes),
      ...(options.gate ? { requestGate: options.gate } : {}),
    });
  }
}

/**
 * The user ids a request message acts as: its `user_context.user_id` (`""` when unset), and
 * that of a message chosen in a oneof (ApplyRequest's `start`).
 */
function userIdsOf(schema: DescMessage, message: Record<string, unknown>): string[] {
  const out: string[] = [];
  if (schema.fields.some((f) => f.localName === "userContext")) {
    const ctx = message.userContext as { userId?: string } | undefined;
    out.push(ctx?.userId ?? "");
  }
  for (const oneof of schema.oneofs) {
    const sel = message[oneof.localName] as { case?: string; value?: unknown } | undefined;
    const field = oneof.fields.find((f) => f.localName === sel?.case);
    if (field?.fieldKind === "message" && typeof sel?.value === "object" && sel.value) {
      out.push(...userIdsOf(field.message, sel.value as Record<string, unknown>));
    }
  }
  return out;
}

function checkUser(bound: string | undefined, schema: DescMessage, message: unknown): void {
  if (bound === undefined) return;
  for (const id of userIdsOf(schema, message as Record<string, unknown>)) {
    if (id !== bound) {
      throw new ConnectError(
        `[PERMISSION_DENIED] This token is bound to user ${JSON.stringify(bound)}, but the ` +
          `request acts as user ${JSON.stringify(id)} (user_context.user_id). Set user_id to ` +
          `${JSON.stringify(bound)} or use the token issued for that user.`,
        Code.PermissionDenied,
      );
    }
  }
}

/**
 * An interceptor that checks the token again (defence in depth behind the gate) and holds a
 * token bound to a user to that user: every message that names a user (each message of a
 * stream too) must name the token's user, else PERMISSION_DENIED.
 *
 * @param tokens The accepted tokens.
 * @returns The interceptor.
 */
export function authInterceptor(tokens: TokenSet): Interceptor {
  return (next) => (req) => {
    if (OPEN_SERVICES.has(req.service.typeName) || ADMIN_SERVICES.has(req.service.typeName)) {
      return next(req);
    }
    const c = tokens.check(req.header.get("authorization"));
    if (!c.ok) throw new ConnectError(CREDENTIAL_MESSAGES[c.problem], Code.Unauthenticated);
    const bound = c.userId;
    if (bound === undefined) return next(req);
    const schema = req.method.input;
    if (!req.stream) {
      checkUser(bound, schema, req.message);
      return next(req);
    }
    const inner = req.message;
    return next({
      ...req,
      message: (async function* () {
        for await (const m of inner) {
          checkUser(bound, schema, m);
          yield m;
        }
      })(),
    });
  };
}
