/**
 * Typed access to every method of protocol v1, derived from the method registry
 * (src/protocol/registry.ts) by type alone: `api.whoami()`, `api.request_lease({ secret: "gh" })`.
 * A method added to the registry is callable here with no edit. Results come in their decoded form
 * (a secret value as SecretBytes: wipe it, or `using`, when done).
 *
 * The same {@link Api} is served by a daemon connection (src/client/client.ts) and by an in-process
 * vault (src/backend/in-process.ts), so a caller does not care which it holds.
 */
import type { MethodName, Params, Result } from "../protocol/registry.js";

/** Calls one method by wire name and resolves to its result in decoded form. */
export type Caller = <M extends MethodName>(method: M, params: Params<M>) => Promise<Result<M>>;

/** The arguments of a method: its params, optional when it needs none. */
export type ParamsArg<M extends MethodName> = {} extends Params<M> ? [params?: Params<M>] : [params: Params<M>];

/** Every method of the protocol, by wire name. */
export type Api = { readonly [M in MethodName]: (...params: ParamsArg<M>) => Promise<Result<M>> };

/** Names that are never methods: asked of any object by promises, JSON and inspection. */
const NOT_METHODS = new Set(["then", "catch", "finally", "toJSON", "constructor", "valueOf", "toString"]);

/**
 * An {@link Api} over `call`. With `names` (the registry's, for callers that load it anyway), a plain
 * object with exactly those methods. Without (the client: loading the registry at run time would
 * load zod, which costs the CLI's start-up), a proxy on which every property that looks like a
 * method name is a call of that name; one the daemon does not know is refused by it (`invalid_request`).
 */
export function apiOf(call: Caller, names?: readonly string[]): Api {
  const one = (name: string) => (params: object = {}) => (call as (m: string, p: object) => Promise<unknown>)(name, params);
  if (names !== undefined) return Object.freeze(Object.fromEntries(names.map((n) => [n, one(n)]))) as unknown as Api;
  const fns = new Map<string, (params?: object) => Promise<unknown>>();
  return new Proxy(Object.create(null) as Api, {
    get(_target, name) {
      if (typeof name !== "string" || NOT_METHODS.has(name) || !/^[a-z][a-z0-9_]*$/.test(name)) return undefined;
      let fn = fns.get(name);
      if (fn === undefined) fns.set(name, (fn = one(name)));
      return fn;
    },
  });
}
