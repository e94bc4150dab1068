/**
 * Cross-site federation on NATS JetStream: the transport between one coordinator and the sites
 * (work queues, results, KV round state, object store), the checked binary codec of factor
 * payloads, the coordinator/site protocol, and a loopback nats-server with throw-away TLS and
 * per-site credentials for tests and one-machine trials.
 *
 * @example
 * ```ts
 * import { decodePayload, encodePayload, federationNames } from "./mod.ts";
 * federationNames("deer").resultSubject("site-a"); // "deer.result.site-a"
 * const bytes = await encodePayload({ meta: {}, arrays: [] });
 * (await decodePayload(bytes)).arrays.length; // 0
 * ```
 * @module
 */
export {
  type ArraySpec,
  checkArrays,
  type CodecLimits,
  decodePayload,
  DEFAULT_LIMITS,
  encodePayload,
  type FloatArray,
  type NamedArray,
  type Payload,
  PayloadError,
  sha256Hex,
} from "./codec.ts";
export {
  acceptedKey,
  type BlobRef,
  checkResultEnvelope,
  checkTaskEnvelope,
  refusedKey,
  type ResultEnvelope,
  type ResultExpectation,
  resultMessageId,
  type TaskEnvelope,
  taskMessageId,
} from "./protocol.ts";
export {
  checkSiteName,
  type FederationNames,
  federationNames,
  type Permissions,
  SITE_NAME_PATTERN,
  sitePermissions,
} from "./subjects.ts";
export {
  checkCredentials,
  type Credentials,
  credentialsFolder,
  credentialsIn,
  findNatsServer,
  type NatsServer,
  natsServerConfig,
  type NatsServerOptions,
  natsServerVersion,
  prepareNatsServer,
  startNatsServer,
} from "./server.ts";
export { type CertFiles, makeThrowawayPki, type Pki } from "./pki.ts";
export {
  type AcceptedResult,
  connectFederation,
  type Coordinator,
  type Lease,
  openCoordinator,
  openSite,
  type PhaseResults,
  provisionFederation,
  type Refusal,
  type ResultOutcome,
  type Site,
  type Traffic,
  type TransportSettings,
  withHeartbeat,
} from "./transport.ts";
