package guestfeed_test

// The Test*Live tests call a real server; tests/test_go_client.py starts
// `guestfeed serve --demo` and sets (they skip without them):
//
//	GUESTFEED_TEST_ADDR        host:port (plaintext)
//	GUESTFEED_TEST_TOKEN       the demo guest's token
//	GUESTFEED_TEST_EVENT       the demo event's id
//	GUESTFEED_TEST_USER        the demo guest's users.id
//	GUESTFEED_TEST_FEED_IDS    the guest's whole feed, newest first, comma-separated
//	GUESTFEED_TEST_READ_MODEL  the read model that serves it (READ_MODEL_V1)
//	GUESTFEED_TEST_BUCKET      the (event, guest) rollout bucket
//	GUESTFEED_TEST_REASON      the rollout's decision reason (DECISION_REASON_KILL_SWITCH)
//
// The other tests need no server.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang/protobuf/proto"
	"github.com/guestfeed/guestfeed/clients/go/guestfeed"
	rpc "github.com/guestfeed/guestfeed/generated/go/google/rpc"
	gf "github.com/guestfeed/guestfeed/generated/go/guestfeed/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// An event the demo guest is not a guest of.
const otherEvent = "00000000-0000-4000-8000-0000000000e1"

type live struct {
	addr, token, event, user string
	ids                      []string
	readModel                gf.ReadModel
	bucket                   int32
	reason                   gf.DecisionReason
}

func liveEnv(t *testing.T) live {
	t.Helper()
	names := []string{
		"GUESTFEED_TEST_ADDR", "GUESTFEED_TEST_TOKEN", "GUESTFEED_TEST_EVENT",
		"GUESTFEED_TEST_USER", "GUESTFEED_TEST_FEED_IDS", "GUESTFEED_TEST_READ_MODEL",
		"GUESTFEED_TEST_BUCKET", "GUESTFEED_TEST_REASON",
	}
	v := map[string]string{}
	for _, name := range names {
		if v[name] = os.Getenv(name); v[name] == "" {
			t.Skipf("%s is not set: no live server (tests/test_go_client.py sets it)", name)
		}
	}
	bucket, err := strconv.Atoi(v["GUESTFEED_TEST_BUCKET"])
	if err != nil {
		t.Fatalf("GUESTFEED_TEST_BUCKET: %v", err)
	}
	model, ok := gf.ReadModel_value[v["GUESTFEED_TEST_READ_MODEL"]]
	if !ok {
		t.Fatalf("GUESTFEED_TEST_READ_MODEL: unknown %q", v["GUESTFEED_TEST_READ_MODEL"])
	}
	reason, ok := gf.DecisionReason_value[v["GUESTFEED_TEST_REASON"]]
	if !ok {
		t.Fatalf("GUESTFEED_TEST_REASON: unknown %q", v["GUESTFEED_TEST_REASON"])
	}
	return live{
		addr: v["GUESTFEED_TEST_ADDR"], token: v["GUESTFEED_TEST_TOKEN"],
		event: v["GUESTFEED_TEST_EVENT"], user: v["GUESTFEED_TEST_USER"],
		ids:       strings.Split(v["GUESTFEED_TEST_FEED_IDS"], ","),
		readModel: gf.ReadModel(model), bucket: int32(bucket),
		reason: gf.DecisionReason(reason),
	}
}

func dial(t *testing.T, addr string, cfg guestfeed.Config) *guestfeed.Client {
	t.Helper()
	cfg.Insecure = true // the test server listens on loopback, plaintext
	c, err := guestfeed.Dial(context.Background(), addr, cfg)
	if err != nil {
		t.Fatalf("Dial(%s): %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ids(messages []*gf.GuestMessage) []string {
	out := make([]string, len(messages))
	for i, m := range messages {
		out[i] = m.GetMessageId()
	}
	return out
}

// wantError checks err is an *Error with this code and ErrorInfo reason
// (domain guestfeed.v1), and returns it.
func wantError(t *testing.T, err error, code codes.Code, reason string) *guestfeed.Error {
	t.Helper()
	var e *guestfeed.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a *guestfeed.Error", err, err)
	}
	if e.Code != code || e.Reason != reason {
		t.Fatalf("got %v %q (%s), want %v %q", e.Code, e.Reason, e.Message, code, reason)
	}
	if reason != "" && e.Domain != "guestfeed.v1" {
		t.Fatalf("ErrorInfo domain %q, want guestfeed.v1", e.Domain)
	}
	if status.Code(err) != code {
		t.Fatalf("status.Code(err) = %v, want %v", status.Code(err), code)
	}
	if e.Message == "" {
		t.Fatalf("no status message: %#v", e)
	}
	return e
}

func TestListMessagesLive(t *testing.T) {
	env := liveEnv(t)
	c := dial(t, env.addr, guestfeed.Config{Token: env.token})
	page, err := c.ListMessages(context.Background(), &gf.ListMessagesRequest{EventId: env.event, PageSize: 5})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(page.GetMessages()); !reflect.DeepEqual(got, env.ids[:5]) {
		t.Fatalf("first page %v, want %v", got, env.ids[:5])
	}
	if !page.GetMessages()[0].GetIsOwnMessage() {
		t.Fatal("the demo guest's newest message is her own reply")
	}
	if page.GetNextPageToken() == "" || page.GetReadModel() != env.readModel {
		t.Fatalf("next_page_token %q, read_model %v", page.GetNextPageToken(), page.GetReadModel())
	}
}

func TestIteratorReadsEveryPageLive(t *testing.T) {
	env := liveEnv(t)
	c := dial(t, env.addr, guestfeed.Config{Token: env.token, Timeout: 5 * time.Second})
	req := &gf.ListMessagesRequest{EventId: env.event, PageSize: 5}
	it := c.Messages(context.Background(), req)
	var got []*gf.GuestMessage
	for it.Next() {
		got = append(got, it.Message())
		if it.Page().GetReadModel() != env.readModel {
			t.Fatalf("page read_model %v", it.Page().GetReadModel())
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ids(got), env.ids) {
		t.Fatalf("whole feed %v, want %v", ids(got), env.ids)
	}
	if want := (len(env.ids) + 4) / 5; it.Pages() != want && !(len(env.ids)%5 == 0 && it.Pages() == want+1) {
		t.Fatalf("%d pages for %d messages", it.Pages(), len(env.ids))
	}
	if it.NextPageToken() != "" || req.GetPageToken() != "" {
		t.Fatalf("at the end: token %q, request changed to %q", it.NextPageToken(), req.GetPageToken())
	}
}

func TestForEachWithATokenFuncAndAnOwnedConnectionLive(t *testing.T) {
	env := liveEnv(t)
	conn, err := grpc.Dial(env.addr, grpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var calls int32
	c := guestfeed.New(conn, guestfeed.Config{
		Insecure: true,
		TokenFunc: func(ctx context.Context) (string, error) {
			atomic.AddInt32(&calls, 1)
			return env.token, nil
		},
	})
	var got []string
	err = c.ForEachMessage(context.Background(), &gf.ListMessagesRequest{EventId: env.event, PageSize: 7},
		func(m *gf.GuestMessage) error {
			got = append(got, m.GetMessageId())
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, env.ids) {
		t.Fatalf("whole feed %v, want %v", got, env.ids)
	}
	if pages := (len(env.ids) + 6) / 7; int(calls) < pages {
		t.Fatalf("token func called %d times for %d pages", calls, pages)
	}
	// fn's error stops the walk and comes back as it is.
	stop := errors.New("enough")
	n := 0
	err = c.ForEachMessage(context.Background(), &gf.ListMessagesRequest{EventId: env.event, PageSize: 2},
		func(*gf.GuestMessage) error {
			if n++; n == 3 {
				return stop
			}
			return nil
		})
	if err != stop || n != 3 {
		t.Fatalf("ForEachMessage returned %v after %d messages", err, n)
	}
}

func TestGetReadModelLive(t *testing.T) {
	env := liveEnv(t)
	c := dial(t, env.addr, guestfeed.Config{Token: env.token})
	got, err := c.GetReadModel(context.Background(), env.event, env.user)
	if err != nil {
		t.Fatal(err)
	}
	if got.GetReadModel() != env.readModel || got.GetBucket() != env.bucket || got.GetReason() != env.reason {
		t.Fatalf("GetReadModel = %v", got)
	}
	// Asking about someone else needs service_role.
	_, err = c.GetReadModel(context.Background(), env.event, "00000000-0000-4000-8000-0000000000a1")
	wantError(t, err, codes.PermissionDenied, "NOT_SELF")
}

func TestErrorsCarryCodeMessageAndReasonLive(t *testing.T) {
	env := liveEnv(t)
	c := dial(t, env.addr, guestfeed.Config{Token: env.token})
	ctx := context.Background()

	_, err := c.ListMessages(ctx, &gf.ListMessagesRequest{EventId: otherEvent})
	e := wantError(t, err, codes.PermissionDenied, "NOT_EVENT_GUEST")
	if e.Metadata["event_id"] != otherEvent {
		t.Fatalf("ErrorInfo metadata %v", e.Metadata)
	}
	if !strings.HasPrefix(e.Error(), "PERMISSION_DENIED: ") {
		t.Fatalf("Error() = %q", e.Error())
	}

	_, err = c.ListMessages(ctx, &gf.ListMessagesRequest{EventId: "not-a-uuid"})
	e = wantError(t, err, codes.InvalidArgument, "INVALID_UUID")
	if !strings.HasPrefix(e.Message, "event_id: must be a UUID") || e.FieldViolations["event_id"] == "" ||
		e.ViolationReasons["event_id"] != "INVALID_UUID" {
		t.Fatalf("InvalidArgument: %q %v %v", e.Message, e.FieldViolations, e.ViolationReasons)
	}

	// The iterator stops on the error and reports it.
	it := c.Messages(ctx, &gf.ListMessagesRequest{EventId: env.event, PageSize: -1})
	if it.Next() {
		t.Fatal("a negative page_size yielded a message")
	}
	wantError(t, it.Err(), codes.InvalidArgument, "PAGE_SIZE_NEGATIVE")

	anonymous := dial(t, env.addr, guestfeed.Config{})
	_, err = anonymous.ListMessages(ctx, &gf.ListMessagesRequest{EventId: env.event})
	wantError(t, err, codes.Unauthenticated, "TOKEN_MISSING")
}

func TestDefaultDeadlineLive(t *testing.T) {
	env := liveEnv(t)
	c := dial(t, env.addr, guestfeed.Config{Token: env.token, Timeout: time.Nanosecond})
	_, err := c.ListMessages(context.Background(), &gf.ListMessagesRequest{EventId: env.event})
	wantError(t, err, codes.DeadlineExceeded, "")
	// A deadline of the caller's own wins over the default.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.ListMessages(ctx, &gf.ListMessagesRequest{EventId: env.event}); err != nil {
		t.Fatal(err)
	}
}

// --- no server needed ---

func TestFromErrorDecodesTheDetails(t *testing.T) {
	st, err := status.New(codes.ResourceExhausted, "too many streams").WithDetails(
		&rpc.ErrorInfo{Reason: "STREAM_LIMIT", Domain: "guestfeed.v1", Metadata: map[string]string{"scope": "caller"}},
		&rpc.BadRequest{FieldViolations: []*rpc.BadRequest_FieldViolation{
			{Field: "page_size", Description: "must not be negative", Reason: "NEGATIVE"},
		}},
	)
	if err != nil {
		t.Fatal(err)
	}
	// As it arrives: a status rebuilt from the wire proto.
	e := guestfeed.FromError(status.FromProto(st.Proto()).Err())
	if e.Code != codes.ResourceExhausted || e.Message != "too many streams" || e.Reason != "STREAM_LIMIT" ||
		e.Domain != "guestfeed.v1" || e.Metadata["scope"] != "caller" ||
		e.FieldViolations["page_size"] != "must not be negative" || e.ViolationReasons["page_size"] != "NEGATIVE" {
		t.Fatalf("%#v", e)
	}
	if len(e.Details) != 2 {
		t.Fatalf("details %v", e.Details)
	}
	if e.Error() != "RESOURCE_EXHAUSTED: too many streams (STREAM_LIMIT)" {
		t.Fatalf("Error() = %q", e.Error())
	}
	if guestfeed.FromError(e) != e || guestfeed.Reason(e) != "STREAM_LIMIT" || status.Code(e) != codes.ResourceExhausted {
		t.Fatal("an *Error does not pass through")
	}
	wrapped := fmt.Errorf("listing: %w", e)
	if guestfeed.FromError(wrapped) != e {
		t.Fatal("a wrapped *Error is not found")
	}
	if guestfeed.FromError(nil) != nil {
		t.Fatal("nil is not nil")
	}
	if e := guestfeed.FromError(context.DeadlineExceeded); e.Code != codes.DeadlineExceeded {
		t.Fatalf("context deadline: %v", e.Code)
	}
	if e := guestfeed.FromError(errors.New("boom")); e.Code != codes.Unknown || e.Reason != "" {
		t.Fatalf("plain error: %#v", e)
	}
}

func TestTokenCredentials(t *testing.T) {
	ctx := context.Background()
	md, err := guestfeed.TokenCredentials{Token: "abc"}.GetRequestMetadata(ctx)
	if err != nil || md["authorization"] != "Bearer abc" {
		t.Fatalf("%v %v", md, err)
	}
	if !(guestfeed.TokenCredentials{Token: "abc"}).RequireTransportSecurity() {
		t.Fatal("a token must require TLS unless allowed otherwise")
	}
	if (guestfeed.TokenCredentials{Token: "abc", AllowInsecure: true}).RequireTransportSecurity() {
		t.Fatal("AllowInsecure")
	}
	n := 0
	rotating := guestfeed.TokenCredentials{Func: func(context.Context) (string, error) {
		n++
		return fmt.Sprintf("t%d", n), nil
	}}
	for want := 1; want <= 2; want++ {
		md, _ := rotating.GetRequestMetadata(ctx)
		if md["authorization"] != fmt.Sprintf("Bearer t%d", want) {
			t.Fatalf("call %d: %v", want, md)
		}
	}
	_, err = guestfeed.TokenCredentials{Func: func(context.Context) (string, error) {
		return "", errors.New("vault sealed")
	}}.GetRequestMetadata(ctx)
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "vault sealed") {
		t.Fatalf("failing provider: %v", err)
	}
}

// fakeConn serves ListMessages from a fixed feed, pageSize at a time.
type fakeConn struct {
	feed      []string
	deadlines []time.Duration
	tokens    []string
	fail      error
}

func (f *fakeConn) Invoke(ctx context.Context, method string, args, reply interface{}, _ ...grpc.CallOption) error {
	if method != "/guestfeed.v1.GuestFeedService/ListMessages" {
		return status.Error(codes.Unimplemented, method)
	}
	d, ok := ctx.Deadline()
	if !ok {
		d = time.Time{}
	}
	f.deadlines = append(f.deadlines, time.Until(d))
	req := args.(*gf.ListMessagesRequest)
	f.tokens = append(f.tokens, req.GetPageToken())
	if f.fail != nil && len(f.tokens) == 2 {
		return f.fail
	}
	start := 0
	if req.GetPageToken() != "" {
		start, _ = strconv.Atoi(req.GetPageToken())
	}
	end := start + int(req.GetPageSize())
	resp := &gf.ListMessagesResponse{}
	if end < len(f.feed) {
		resp.NextPageToken = strconv.Itoa(end)
	} else {
		end = len(f.feed)
	}
	for _, id := range f.feed[start:end] {
		resp.Messages = append(resp.Messages, &gf.GuestMessage{MessageId: id})
	}
	proto.Merge(reply.(*gf.ListMessagesResponse), resp)
	return nil
}

func (f *fakeConn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Error(codes.Unimplemented, "no streams")
}

func TestIteratorPagesWithTheDefaultDeadline(t *testing.T) {
	conn := &fakeConn{feed: []string{"a", "b", "c", "d", "e", "f", "g"}}
	c := guestfeed.New(conn, guestfeed.Config{Timeout: 3 * time.Second})
	it := c.Messages(context.Background(), &gf.ListMessagesRequest{EventId: "e", PageSize: 3})
	var got []string
	for it.Next() {
		got = append(got, it.Message().GetMessageId())
	}
	if it.Err() != nil || strings.Join(got, "") != "abcdefg" || it.Pages() != 3 {
		t.Fatalf("%v %v pages=%d", got, it.Err(), it.Pages())
	}
	if !reflect.DeepEqual(conn.tokens, []string{"", "3", "6"}) {
		t.Fatalf("page tokens sent: %v", conn.tokens)
	}
	for _, d := range conn.deadlines {
		if d <= 0 || d > 3*time.Second {
			t.Fatalf("page deadline %v, want the 3s default", d)
		}
	}
	// Resuming from a token starts there.
	it = c.Messages(context.Background(), &gf.ListMessagesRequest{EventId: "e", PageSize: 3, PageToken: "5"})
	got = nil
	for it.Next() {
		got = append(got, it.Message().GetMessageId())
	}
	if strings.Join(got, "") != "fg" {
		t.Fatalf("resumed: %v", got)
	}
}

func TestIteratorStopsOnAnErrorWithTheTokenToResume(t *testing.T) {
	conn := &fakeConn{
		feed: []string{"a", "b", "c", "d", "e"},
		fail: status.Error(codes.Unavailable, "database unavailable"),
	}
	c := guestfeed.New(conn, guestfeed.Config{Timeout: -1})
	it := c.Messages(context.Background(), &gf.ListMessagesRequest{EventId: "e", PageSize: 2})
	n := 0
	for it.Next() {
		n++
	}
	if n != 2 || guestfeed.FromError(it.Err()).Code != codes.Unavailable || it.NextPageToken() != "2" {
		t.Fatalf("n=%d err=%v token=%q", n, it.Err(), it.NextPageToken())
	}
	if conn.deadlines[0] > 0 {
		t.Fatal("Timeout -1 set a deadline")
	}
}
