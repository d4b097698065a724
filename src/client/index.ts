/** The lessor client SDK: {@link LessorClient} over a socket, and leases as objects. */
export {
  LessorClient,
  type Endpoint,
  type ClientOptions,
  type SecretSpec,
  type SecretInput,
  type StoreSecretInput,
  type LeaseRequestInput,
  type AccessTargetInput,
  type ClientAccessResult,
  type LeaseListFilter,
} from "./client.js";
export { LessorMethods } from "./facade.js";
export type { Api, Caller } from "./api.js";
export type { ClientTransport, Dial, Binding } from "./transport.js";
export { CredentialProvider, LeasedCredential, type ProviderDefaults, type LeaseOptions } from "./credential-provider.js";
export type { WireIdentity } from "../protocol/messages.js";
export type { MethodName, Params, Result, Results, WireResult, WireAuditEvent } from "../protocol/registry.js";
