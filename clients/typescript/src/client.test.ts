// The TypeScript client against a real `guestfeed serve --demo` (node --test).
// Run by tests/test_typescript_client.py and `make ts-test`.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";

import type { Interceptor } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

import { Code, GuestFeedClient, GuestFeedError, ReadModel, type GuestMessage } from "./client.js";
import { DecisionReason } from "../../../generated/ts/guestfeed/v1/rollout_pb.js";
import { DemoServer, demoFacts, missing, type DemoFacts } from "./demo_server.js";

const why = await missing();

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

const ids = (messages: GuestMessage[]): string[] => messages.map((m) => m.messageId);

async function rejection(promise: Promise<unknown>): Promise<GuestFeedError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof GuestFeedError, `not a GuestFeedError: ${String(err)}`);
    return err;
  }
  assert.fail("the call succeeded");
}

describe("GuestFeedClient against guestfeed serve --demo", { skip: why }, () => {
  let server: DemoServer;
  let facts: DemoFacts;
  let guestToken: string;
  let strangerToken: string;
  let client: GuestFeedClient;
  // Every RPC the counting client makes, by method name.
  const calls: string[] = [];
  let sessions: Http2SessionManager;
  let counting: GuestFeedClient;

  before(async () => {
    [server, facts] = await Promise.all([DemoServer.start(), demoFacts()]);
    // A user with a valid token who is no guest of the demo event.
    [guestToken, strangerToken] = await Promise.all([
      server.token(facts.guestId),
      server.token(randomUUID()),
    ]);
    client = new GuestFeedClient({ baseUrl: server.baseUrl, token: guestToken });
    const count: Interceptor = (next) => async (req) => {
      calls.push(req.method.name);
      return await next(req);
    };
    sessions = new Http2SessionManager(server.baseUrl);
    const transport = createGrpcTransport({
      baseUrl: server.baseUrl,
      sessionManager: sessions,
      interceptors: [count],
    });
    counting = new GuestFeedClient({ transport, token: () => guestToken });
  });

  after(async () => {
    client?.close();
    sessions?.abort();
    await server?.stop();
  });

  it("the demo feed is what this test expects", () => {
    assert.equal(facts.feed.length, 16, "the README says 16");
    assert.equal(facts.feed[0], facts.ownMessageId);
  });

  it("listMessages returns the guest's newest page", async () => {
    const page = await client.listMessages({ eventId: facts.eventId, pageSize: 5 });
    assert.deepEqual(ids(page.messages), facts.feed.slice(0, 5));
    const [first] = page.messages;
    assert.equal(first?.isOwnMessage, true);
    assert.equal(first?.createdAt !== undefined, true);
    assert.notEqual(page.nextPageToken, "");
    assert.equal(page.readModel, ReadModel.V1);
    assert.notEqual(page.watchToken, "");
  });

  it("resumes from a page token: ListMessages, and either iterator", async () => {
    const first = await client.listMessages({ eventId: facts.eventId, pageSize: 5 });
    const second = await client.listMessages({
      eventId: facts.eventId,
      pageSize: 5,
      pageToken: first.nextPageToken,
    });
    assert.deepEqual(ids(second.messages), facts.feed.slice(5, 10));
    for (const stream of [false, true]) {
      const rest = await collect(
        client.iterMessages(facts.eventId, { pageSize: 5, pageToken: first.nextPageToken, stream }),
      );
      assert.deepEqual(ids(rest), facts.feed.slice(5), `stream: ${stream}`);
    }
  });

  it("iterMessages pages with ListMessages on its own", async () => {
    calls.length = 0;
    const all = await collect(counting.iterMessages(facts.eventId, { pageSize: 5 }));
    assert.deepEqual(ids(all), facts.feed);
    assert.deepEqual(calls, Array(4).fill("ListMessages"), "pages of 5, 5, 5, 1");
  });

  it("iterMessages rides one StreamMessages call with stream: true", async () => {
    calls.length = 0;
    const pages = await collect(counting.iterPages(facts.eventId, { pageSize: 5, stream: true }));
    assert.deepEqual(calls, ["StreamMessages"]);
    assert.deepEqual(
      pages.map((p) => p.messages.length),
      [5, 5, 5, 1],
    );
    assert.deepEqual(ids(pages.flatMap((p) => p.messages)), facts.feed);
    assert.ok(pages.slice(0, -1).every((p) => p.nextPageToken !== ""));
    assert.equal(pages.at(-1)?.nextPageToken, "");
    assert.ok(pages.every((p) => p.readModel === ReadModel.V1));
  });

  it("the whole feed with the server's page size, both ways", async () => {
    for (const stream of [false, true]) {
      assert.deepEqual(ids(await collect(client.iterMessages(facts.eventId, { stream }))), facts.feed);
    }
  });

  it("maxMessages stops either iterator, and its last token resumes exactly", async () => {
    for (const stream of [false, true]) {
      const pages = await collect(
        client.iterPages(facts.eventId, { pageSize: 5, maxMessages: 12, stream }),
      );
      assert.deepEqual(ids(pages.flatMap((p) => p.messages)), facts.feed.slice(0, 12));
      const rest = await collect(
        client.iterMessages(facts.eventId, { pageToken: pages.at(-1)?.nextPageToken ?? "", stream }),
      );
      assert.deepEqual(ids(rest), facts.feed.slice(12), `stream: ${stream}`);
    }
  });

  it("a user who is not a guest is PERMISSION_DENIED with its ErrorInfo reason", async () => {
    const stranger = new GuestFeedClient({ baseUrl: server.baseUrl, token: strangerToken });
    try {
      const err = await rejection(stranger.listMessages({ eventId: facts.eventId }));
      assert.equal(err.code, Code.PermissionDenied);
      assert.equal(err.codeName, "PERMISSION_DENIED");
      assert.equal(err.reason, "NOT_EVENT_GUEST");
      assert.equal(err.domain, "guestfeed.v1");
      assert.deepEqual(err.metadata, { event_id: facts.eventId });
      assert.equal(err.rawMessage, "you are not an active guest of this event");
      assert.equal(err.message, `PERMISSION_DENIED: ${err.rawMessage}`);
      for (const stream of [false, true]) {
        const viaIterator = await rejection(collect(stranger.iterMessages(facts.eventId, { stream })));
        assert.equal(viaIterator.code, Code.PermissionDenied);
        assert.equal(viaIterator.reason, "NOT_EVENT_GUEST", `stream: ${stream}`);
      }
    } finally {
      stranger.close();
    }
  });

  it("getReadModel answers for the guest, and refuses another user (NOT_SELF)", async () => {
    const answer = await client.getReadModel({ eventId: facts.eventId, userId: facts.guestId });
    assert.equal(answer.readModel, ReadModel.V1);
    assert.equal(answer.bucket, facts.bucket);
    assert.equal(answer.reason, DecisionReason.KILL_SWITCH);
    assert.equal(answer.configRevision, 1n);
    const err = await rejection(client.getReadModel({ eventId: facts.eventId, userId: randomUUID() }));
    assert.equal(err.code, Code.PermissionDenied);
    assert.equal(err.reason, "NOT_SELF");
  });

  it("INVALID_ARGUMENT carries the BadRequest field violations", async () => {
    const err = await rejection(client.listMessages({ eventId: "not-a-uuid" }));
    assert.equal(err.code, Code.InvalidArgument);
    assert.equal(err.reason, "INVALID_UUID");
    assert.deepEqual(Object.keys(err.fieldViolations), ["event_id"]);
  });

  it("calls the token function for every call, and sends no token as UNAUTHENTICATED", async () => {
    let asked = 0;
    const rotating = new GuestFeedClient({
      baseUrl: server.baseUrl,
      token: async () => {
        asked += 1;
        return asked === 1 ? guestToken : "";
      },
    });
    try {
      await rotating.listMessages({ eventId: facts.eventId, pageSize: 1 });
      const err = await rejection(rotating.listMessages({ eventId: facts.eventId, pageSize: 1 }));
      assert.equal(asked, 2);
      assert.equal(err.code, Code.Unauthenticated);
      assert.equal(err.reason, "TOKEN_MISSING");
    } finally {
      rotating.close();
    }
  });

  it("applies the deadline: the client's default, or a call's own", async () => {
    const hasty = new GuestFeedClient({ baseUrl: server.baseUrl, token: guestToken, timeoutMs: 1 });
    try {
      const err = await rejection(hasty.listMessages({ eventId: facts.eventId }));
      assert.equal(err.code, Code.DeadlineExceeded);
      const page = await hasty.listMessages({ eventId: facts.eventId }, { timeoutMs: 10_000 });
      assert.equal(page.messages.length, 16);
    } finally {
      hasty.close();
    }
  });
});
