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
export { CredentialProvider, LeasedCredential, type ProviderDefaults, type LeaseOptions } from "./credential-provider.js";
export type { WireIdentity } from "../protocol/messages.js";
export type { MethodName, Params, Results, WireAuditEvent } from "../protocol/methods.js";
