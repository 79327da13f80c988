// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The wire contract of Valise: Spark Connect's artifact, config and session RPCs
 * (`spark.connect.SparkConnectService`), Valise's own `valise.v1` services, and the pure
 * helpers both sides need — artifact-name rules, PySpark-identical chunking and CRC-32, and the
 * size-capped framing of every length-prefixed stream (`FrameReader`, Arrow IPC splitting).
 *
 * Generated code (protobuf-es v2) lives under `gen/` and is re-exported here by name.
 *
 * ```ts
 * import { addArtifactsRequests, bytesArtifact, parseArtifactName } from "@valise/protocol";
 * import { equal, throws } from "node:assert/strict";
 *
 * equal(parseArtifactName("pyfiles\\util.py").path, "pyfiles/util.py");
 * throws(() => parseArtifactName("files/../../etc/passwd"));
 *
 * const data = new Uint8Array(70_000);
 * const kinds = [];
 * for await (const req of addArtifactsRequests([bytesArtifact("files/big.bin", data)], {
 *   sessionId: "0b3f6c2e-7e61-4d0e-8a55-3f8f5f0c9f10",
 * })) kinds.push(req.payload.case);
 * equal(kinds.join(","), "beginChunk,chunk,chunk");
 * ```
 *
 * @module
 */
export {
  DEFAULT_MAX_IPC_MESSAGE_BYTES,
  ipcBatchStreams,
  type IpcMessage,
  ipcMessageReader,
  ipcMessages,
  IpcMessageType,
  type IpcReadOptions,
  ipcRecordBatches,
  type IpcStreamOpener,
} from "./arrow_ipc.ts";
export * from "./artifact_name.ts";
export * from "./chunking.ts";
export * from "./crc32.ts";
export {
  ByteQueue,
  type FrameFormat,
  type FrameMeasure,
  FrameReader,
  type FrameReaderOptions,
  FramingError,
  type FramingErrorCode,
  isFramingError,
  u32Frames,
} from "./framing.ts";
export {
  type EnvelopeFault,
  grpcEnvelope,
  GrpcEnvelopeReader,
  http2ErrorName,
} from "./grpc_wire.ts";
export { guardHttp2Session } from "./http2_session_guard.ts";
export * from "./pip_requirements.ts";
export * from "./session_id.ts";
export { SPARK_CONNECT_VERSION } from "./spark_version.ts";
export {
  type AddArtifactsRequest,
  type AddArtifactsRequest_ArtifactChunk,
  AddArtifactsRequest_ArtifactChunkSchema,
  type AddArtifactsRequest_Batch,
  AddArtifactsRequest_BatchSchema,
  type AddArtifactsRequest_BeginChunkedArtifact,
  AddArtifactsRequest_BeginChunkedArtifactSchema,
  type AddArtifactsRequest_SingleChunkArtifact,
  AddArtifactsRequest_SingleChunkArtifactSchema,
  AddArtifactsRequestSchema,
  type AddArtifactsResponse,
  type AddArtifactsResponse_ArtifactSummary,
  AddArtifactsResponse_ArtifactSummarySchema,
  AddArtifactsResponseSchema,
  type AnalyzePlanRequest,
  AnalyzePlanRequestSchema,
  type AnalyzePlanResponse,
  AnalyzePlanResponseSchema,
  type ArtifactStatusesRequest,
  ArtifactStatusesRequestSchema,
  type ArtifactStatusesResponse,
  type ArtifactStatusesResponse_ArtifactStatus,
  ArtifactStatusesResponse_ArtifactStatusSchema,
  ArtifactStatusesResponseSchema,
  type CloneSessionRequest,
  CloneSessionRequestSchema,
  type CloneSessionResponse,
  CloneSessionResponseSchema,
  type ConfigRequest,
  type ConfigRequest_Operation,
  ConfigRequest_OperationSchema,
  ConfigRequestSchema,
  type ConfigResponse,
  ConfigResponseSchema,
  type ExecutePlanRequest,
  ExecutePlanRequestSchema,
  type ExecutePlanResponse,
  ExecutePlanResponseSchema,
  type FetchErrorDetailsRequest,
  FetchErrorDetailsRequestSchema,
  type FetchErrorDetailsResponse,
  FetchErrorDetailsResponseSchema,
  file_spark_connect_base,
  type InterruptRequest,
  InterruptRequest_InterruptType,
  InterruptRequestSchema,
  type InterruptResponse,
  InterruptResponseSchema,
  type KeyValue,
  KeyValueSchema,
  type Plan,
  PlanSchema,
  type ReattachExecuteRequest,
  ReattachExecuteRequestSchema,
  type ReleaseExecuteRequest,
  ReleaseExecuteRequestSchema,
  type ReleaseExecuteResponse,
  ReleaseExecuteResponseSchema,
  type ReleaseSessionRequest,
  ReleaseSessionRequestSchema,
  type ReleaseSessionResponse,
  ReleaseSessionResponseSchema,
  SparkConnectService,
  type UserContext,
  UserContextSchema,
} from "./gen/spark/connect/base_pb.ts";
export {
  type CommonInlineUserDefinedFunction,
  type DataType,
  type DataType_StructField,
  DataTypeSchema,
  type Expression,
  type Expression_Literal,
  ExpressionSchema,
  file_spark_connect_plan,
  type PythonUDF,
  type Relation,
  RelationSchema,
} from "./gen/spark/connect/plan_pb.ts";
export {
  type ApplyDone,
  ApplyDoneSchema,
  type ApplyError,
  ApplyErrorSchema,
  ApplyForm,
  ApplyFormSchema,
  type ApplyRequest,
  ApplyRequestSchema,
  type ApplyResponse,
  ApplyResponseSchema,
  type ApplyStart,
  ApplyStartSchema,
  file_valise_v1_worker,
  type RunEvent,
  RunEventSchema,
  type RunExited,
  RunExitedSchema,
  type RunInput,
  RunInputSchema,
  type RunInterrupt,
  RunInterruptSchema,
  type RunRequest,
  RunRequestSchema,
  type RunStarted,
  RunStartedSchema,
  WorkerService,
} from "./gen/valise/v1/worker_pb.ts";
export {
  type AttachArtifactsRequest,
  type AttachArtifactsRequest_Attachment,
  AttachArtifactsRequest_AttachmentSchema,
  AttachArtifactsRequestSchema,
  type AttachArtifactsResponse,
  AttachArtifactsResponseSchema,
  type BlobChallenge,
  BlobChallengeSchema,
  type BlobProof,
  BlobProofSchema,
  type ByteRange,
  ByteRangeSchema,
  file_valise_v1_store,
  type HasBlobsRequest,
  HasBlobsRequestSchema,
  type HasBlobsResponse,
  HasBlobsResponseSchema,
  StoreService,
} from "./gen/valise/v1/store_pb.ts";
export {
  file_valise_v1_session,
  type ListArtifactsRequest,
  ListArtifactsRequestSchema,
  type ListArtifactsResponse,
  ListArtifactsResponseSchema,
  type RemoveArtifactsRequest,
  RemoveArtifactsRequestSchema,
  type RemoveArtifactsResponse,
  RemoveArtifactsResponseSchema,
  type SessionArtifact,
  SessionArtifactSchema,
  SessionService,
} from "./gen/valise/v1/session_pb.ts";
export {
  file_valise_v1_pip,
  type PipDistribution,
  PipDistributionSchema,
  type PipEvent,
  PipEventSchema,
  type PipInstallRequest,
  PipInstallRequestSchema,
  type PipListRequest,
  PipListRequestSchema,
  PipService,
  type PipState,
  PipStateSchema,
  type PipUninstallRequest,
  PipUninstallRequestSchema,
} from "./gen/valise/v1/pip_pb.ts";
export {
  AdminService,
  file_valise_v1_admin,
  type ListNodesRequest,
  ListNodesRequestSchema,
  type ListNodesResponse,
  ListNodesResponseSchema,
  type ListSessionsRequest,
  ListSessionsRequestSchema,
  type ListSessionsResponse,
  ListSessionsResponseSchema,
  type NodeSummary,
  NodeSummarySchema,
  type SessionSummary,
  SessionSummarySchema,
  type UserSummary,
  UserSummarySchema,
} from "./gen/valise/v1/admin_pb.ts";
export {
  type ErrorInfo,
  ErrorInfoSchema,
  file_google_rpc_error_details,
} from "./gen/google/rpc/error_details_pb.ts";
export {
  file_grpc_health_v1_health,
  Health,
  type HealthCheckRequest,
  HealthCheckRequestSchema,
  type HealthCheckResponse,
  HealthCheckResponse_ServingStatus,
  HealthCheckResponseSchema,
} from "./gen/grpc/health/v1/health_pb.ts";
