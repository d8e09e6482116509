// A small typed client for guestfeed over gRPC (HTTP/2), on @connectrpc/connect
// v2 and the protoc-gen-es v2 code in generated/ts/. It talks to the grpc.aio
// server directly: no proxy, no Connect protocol on the server side.

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { CallOptions, Client, Transport } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import type { MessageInitShape } from "@bufbuild/protobuf";

import {
  GuestFeedService,
  ReadModel,
  type GuestMessage,
  type ListMessagesRequestSchema,
  type ListMessagesResponse,
} from "../../../generated/ts/guestfeed/v1/feed_pb.js";
import {
  RolloutService,
  type GetReadModelRequestSchema,
  type GetReadModelResponse,
} from "../../../generated/ts/guestfeed/v1/rollout_pb.js";
import { CodeSchema } from "../../../generated/ts/google/rpc/code_pb.js";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  type ErrorInfo,
} from "../../../generated/ts/google/rpc/error_details_pb.js";

export { Code, ReadModel };
export type { GetReadModelResponse, GuestMessage, ListMessagesResponse };

/** A bearer token, or a function returning the current one (called for every call). */
export type TokenSource = string | (() => string | Promise<string>);

export interface GuestFeedClientOptions {
  /** The server, e.g. `http://127.0.0.1:50051` (`https://…` for TLS). Or give `transport`. */
  baseUrl?: string;
  /** A transport of your own (interceptors, TLS options); the caller closes it. */
  transport?: Transport;
  /** The caller's Supabase access token (its `sub` is the guest), or a source of it. */
  token: TokenSource;
  /** The default deadline of a unary call, in milliseconds (10 000 unless set; <= 0: none). */
  timeoutMs?: number;
}

/** Per-call options: a deadline and a cancellation signal. */
export interface CallOpts {
  /** This call's deadline in milliseconds, instead of the client's default (<= 0: none). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface IterOptions {
  /** Messages per page (0: the server's default, 50). */
  pageSize?: number;
  /** Where to start: a `nextPageToken` from either RPC; empty for the newest message. */
  pageToken?: string;
  /** The read model; UNSPECIFIED (the default) lets the rollout decide. */
  readModel?: ReadModel;
  /** Stop after this many messages (0 or unset: the whole feed). */
  maxMessages?: number;
  /** Ride one StreamMessages call instead of paging with ListMessages. */
  stream?: boolean;
  /**
   * A deadline for the stream as a whole (stream: true), unbounded unless set.
   * Paging applies the client's default deadline to each page instead.
   */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** One page of a feed, from either RPC. */
export interface FeedPage {
  messages: GuestMessage[];
  /** Resumes after this page; empty when the history is exhausted. */
  nextPageToken: string;
  readModel: ReadModel;
}

/**
 * A failed call: the gRPC status and its google.rpc details (AIP-193).
 * `message` reads `PERMISSION_DENIED: you are not an active guest of this event`;
 * `rawMessage` is the server's message alone.
 */
export class GuestFeedError extends Error {
  override readonly name = "GuestFeedError";
  /** The status code (the same numbers as gRPC's). */
  readonly code: Code;
  /** The canonical name of the code, e.g. `PERMISSION_DENIED`. */
  readonly codeName: string;
  /** The status message: what to fix, for the server's own errors. */
  readonly rawMessage: string;
  /** `ErrorInfo.reason`, e.g. `NOT_EVENT_GUEST`; empty without an ErrorInfo. */
  readonly reason: string;
  /** `ErrorInfo.domain` (`guestfeed.v1` for the service's errors). */
  readonly domain: string;
  /** `ErrorInfo.metadata`, e.g. `scope` and `limit` of STREAM_LIMIT. */
  readonly metadata: Readonly<Record<string, string>>;
  /** field -> description, from `google.rpc.BadRequest`. */
  readonly fieldViolations: Readonly<Record<string, string>>;
  /** The ConnectError this was made from. */
  override readonly cause: ConnectError;

  constructor(err: ConnectError) {
    const codeName = CodeSchema.value[err.code]?.name ?? String(err.code);
    super(`${codeName}: ${err.rawMessage}`);
    this.cause = err;
    this.code = err.code;
    this.codeName = codeName;
    this.rawMessage = err.rawMessage;
    const info: ErrorInfo | undefined = err.findDetails(ErrorInfoSchema)[0];
    this.reason = info?.reason ?? "";
    this.domain = info?.domain ?? "";
    this.metadata = { ...(info?.metadata ?? {}) };
    const violations: Record<string, string> = {};
    for (const bad of err.findDetails(BadRequestSchema)) {
      for (const v of bad.fieldViolations) violations[v.field] = v.description;
    }
    this.fieldViolations = violations;
  }

  /** Any error a call threw, as a GuestFeedError. */
  static from(err: unknown): GuestFeedError {
    return err instanceof GuestFeedError ? err : new GuestFeedError(ConnectError.from(err));
  }
}

const DEFAULT_TIMEOUT_MS = 10_000;
/** What the server serves for `page_size` 0 (AIP-158). */
const SERVER_DEFAULT_PAGE_SIZE = 50;

/** guestfeed's GuestFeedService and RolloutService.GetReadModel, for one caller. */
export class GuestFeedClient {
  private readonly feed: Client<typeof GuestFeedService>;
  private readonly rollout: Client<typeof RolloutService>;
  private readonly token: TokenSource;
  private readonly timeoutMs: number;
  private readonly sessions: Http2SessionManager | undefined;

  constructor(options: GuestFeedClientOptions) {
    let transport = options.transport;
    if (transport === undefined) {
      if (options.baseUrl === undefined) throw new TypeError("give baseUrl or transport");
      this.sessions = new Http2SessionManager(options.baseUrl);
      transport = createGrpcTransport({ baseUrl: options.baseUrl, sessionManager: this.sessions });
    }
    this.feed = createClient(GuestFeedService, transport);
    this.rollout = createClient(RolloutService, transport);
    this.token = options.token;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /** Closes the HTTP/2 connection the client opened (not a transport it was given). */
  close(): void {
    this.sessions?.abort();
  }

  /** One page of the caller's feed, newest first. */
  async listMessages(
    request: MessageInitShape<typeof ListMessagesRequestSchema>,
    opts: CallOpts = {},
  ): Promise<ListMessagesResponse> {
    try {
      return await this.feed.listMessages(request, await this.callOptions(opts, this.timeoutMs));
    } catch (err) {
      throw GuestFeedError.from(err);
    }
  }

  /** Which read model the rollout gives (event, user): a guest may ask about themselves. */
  async getReadModel(
    request: MessageInitShape<typeof GetReadModelRequestSchema>,
    opts: CallOpts = {},
  ): Promise<GetReadModelResponse> {
    try {
      return await this.rollout.getReadModel(request, await this.callOptions(opts, this.timeoutMs));
    } catch (err) {
      throw GuestFeedError.from(err);
    }
  }

  /**
   * The feed page by page, from `pageToken` to the start of history (or
   * `maxMessages`): ListMessages calls, or one StreamMessages call with `stream`.
   * Each page carries the token that resumes after it.
   */
  async *iterPages(eventId: string, options: IterOptions = {}): AsyncGenerator<FeedPage, void> {
    const { pageSize = 0, readModel = ReadModel.UNSPECIFIED, maxMessages = 0 } = options;
    const call = { timeoutMs: options.timeoutMs, signal: options.signal };
    let left = maxMessages > 0 ? maxMessages : Infinity;
    if (options.stream) {
      try {
        const pages = this.feed.streamMessages(
          { eventId, pageSize, pageToken: options.pageToken ?? "", readModel, maxMessages },
          await this.callOptions(call, 0),
        );
        for await (const page of pages) {
          yield { messages: page.messages, nextPageToken: page.nextPageToken, readModel: page.readModel };
        }
      } catch (err) {
        throw GuestFeedError.from(err);
      }
      return;
    }
    let pageToken = options.pageToken ?? "";
    while (left > 0) {
      // The last page asks for no more than is left, so its token resumes exactly.
      const size = Math.min(pageSize > 0 ? pageSize : SERVER_DEFAULT_PAGE_SIZE, left);
      const page = await this.listMessages(
        { eventId, pageSize: size, pageToken, readModel },
        { signal: options.signal },
      );
      left -= page.messages.length;
      yield { messages: page.messages, nextPageToken: page.nextPageToken, readModel: page.readModel };
      if (!page.nextPageToken) return;
      pageToken = page.nextPageToken;
    }
  }

  /** The feed's messages, newest first, across pages (see iterPages). */
  async *iterMessages(eventId: string, options: IterOptions = {}): AsyncGenerator<GuestMessage, void> {
    for await (const page of this.iterPages(eventId, options)) yield* page.messages;
  }

  private async callOptions(opts: CallOpts, defaultTimeoutMs: number): Promise<CallOptions> {
    const token = typeof this.token === "function" ? await this.token() : this.token;
    const timeoutMs = opts.timeoutMs ?? defaultTimeoutMs;
    return {
      // No token, no header: the server answers UNAUTHENTICATED (TOKEN_MISSING).
      headers: token ? { authorization: `Bearer ${token}` } : {},
      // connect: <= 0 disables a transport's default deadline.
      timeoutMs: timeoutMs > 0 ? timeoutMs : 0,
      signal: opts.signal,
    };
  }
}
