// Package guestfeed is a small Go client for the guestfeed gRPC service.
//
// It wraps the generated GuestFeedServiceClient and RolloutServiceClient
// (github.com/guestfeed/guestfeed/generated/go/guestfeed/v1) with:
//
//   - a bearer token, or a function returning the current one, sent as
//     per-RPC credentials (`authorization: Bearer <JWT>`) on every call;
//   - a default deadline for every unary call whose context has none;
//   - ListMessages, an iterator (and ForEachMessage) over a whole feed by
//     page tokens, and GetReadModel;
//   - one error type, *Error, with the status code, message and the
//     google.rpc ErrorInfo / BadRequest details the service sends.
//
// It builds against grpc-go 1.33 and golang/protobuf 1.3.5 (Debian's
// packages, GOPATH mode), as generated/go/ does.
package guestfeed

import (
	"context"
	"crypto/tls"
	"time"

	"github.com/golang/protobuf/proto"
	gf "github.com/guestfeed/guestfeed/generated/go/guestfeed/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// DefaultTimeout is the default deadline of a unary call when Config.Timeout is 0.
const DefaultTimeout = 10 * time.Second

// TokenFunc returns the bearer token to send. It is called for every call,
// so a rotated token is picked up by the next one.
type TokenFunc func(ctx context.Context) (string, error)

// Config says how a Client authenticates and how long its calls may take.
type Config struct {
	// Token is a fixed bearer token (a Supabase access token or the
	// service_role key). Ignored when TokenFunc is set.
	Token string
	// TokenFunc returns the current token, for every call.
	TokenFunc TokenFunc
	// Timeout is the default deadline of every unary call (each page of an
	// iterator included) whose context has no deadline of its own: 0 means
	// DefaultTimeout, negative means none. A context deadline always wins.
	Timeout time.Duration
	// Insecure dials (or, with New, declares the connection to be)
	// plaintext and lets the token go over it: for a server on loopback
	// (`guestfeed serve` listens on 127.0.0.1). Otherwise Dial uses TLS and
	// the token is only ever sent over TLS.
	Insecure bool
	// TLS is the TLS configuration Dial uses when not Insecure; nil means
	// the system roots.
	TLS *tls.Config
	// DialOptions are added to Dial's own (keepalives, interceptors, ...).
	DialOptions []grpc.DialOption
}

// TokenCredentials are per-RPC credentials that send `authorization: Bearer
// <token>`. Use them with grpc.WithPerRPCCredentials when dialing yourself.
type TokenCredentials struct {
	// Token is sent when Func is nil.
	Token string
	// Func returns the token for each call.
	Func TokenFunc
	// AllowInsecure lets the token go over a plaintext connection.
	AllowInsecure bool
}

// GetRequestMetadata implements credentials.PerRPCCredentials. A failing
// or empty token is UNAUTHENTICATED, before anything is sent.
func (t TokenCredentials) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	token := t.Token
	if t.Func != nil {
		var err error
		if token, err = t.Func(ctx); err != nil {
			return nil, status.Errorf(codes.Unauthenticated, "guestfeed: token provider: %v", err)
		}
	}
	if token == "" {
		return nil, status.Error(codes.Unauthenticated, "guestfeed: the token provider returned an empty token")
	}
	return map[string]string{"authorization": "Bearer " + token}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (t TokenCredentials) RequireTransportSecurity() bool { return !t.AllowInsecure }

var _ credentials.PerRPCCredentials = TokenCredentials{}

func (cfg Config) credentials() credentials.PerRPCCredentials {
	if cfg.Token == "" && cfg.TokenFunc == nil {
		return nil
	}
	return TokenCredentials{Token: cfg.Token, Func: cfg.TokenFunc, AllowInsecure: cfg.Insecure}
}

// Client calls GuestFeedService and RolloutService. It is safe for
// concurrent use.
type Client struct {
	feed     gf.GuestFeedServiceClient
	rollout  gf.RolloutServiceClient
	timeout  time.Duration
	callOpts []grpc.CallOption
	conn     *grpc.ClientConn // set when Dial made it: Close closes it
}

// Dial connects to target (host:port) and returns a Client whose connection
// carries the credentials of cfg (grpc.WithPerRPCCredentials). Close it when
// done. Dial does not wait for the connection: the first call does.
func Dial(ctx context.Context, target string, cfg Config) (*Client, error) {
	opts := []grpc.DialOption{}
	if cfg.Insecure {
		opts = append(opts, grpc.WithInsecure())
	} else {
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(cfg.TLS)))
	}
	if creds := cfg.credentials(); creds != nil {
		opts = append(opts, grpc.WithPerRPCCredentials(creds))
	}
	opts = append(opts, cfg.DialOptions...)
	conn, err := grpc.DialContext(ctx, target, opts...)
	if err != nil {
		return nil, FromError(err)
	}
	c := newClient(conn, cfg)
	c.conn = conn
	return c, nil
}

// New returns a Client on a connection the caller owns (and closes). The
// credentials of cfg are attached to every call (grpc.PerRPCCredentials);
// set cfg.Insecure when conn is plaintext.
func New(conn grpc.ClientConnInterface, cfg Config) *Client {
	c := newClient(conn, cfg)
	if creds := cfg.credentials(); creds != nil {
		c.callOpts = append(c.callOpts, grpc.PerRPCCredentials(creds))
	}
	return c
}

func newClient(conn grpc.ClientConnInterface, cfg Config) *Client {
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	return &Client{
		feed:    gf.NewGuestFeedServiceClient(conn),
		rollout: gf.NewRolloutServiceClient(conn),
		timeout: timeout,
	}
}

// Close closes the connection Dial made; it does nothing for New's.
func (c *Client) Close() error {
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// Feed is the generated GuestFeedService client on the same connection,
// for the calls this package does not wrap (StreamMessages, WatchMessages).
// Calls made through it get neither the default deadline nor, for a Client
// made with New, the credentials: pass grpc.PerRPCCredentials yourself.
func (c *Client) Feed() gf.GuestFeedServiceClient { return c.feed }

// Rollout is the generated RolloutService client on the same connection
// (the administration calls), with the same caveats as Feed.
func (c *Client) Rollout() gf.RolloutServiceClient { return c.rollout }

// withDeadline gives ctx the default deadline unless it has one.
func (c *Client) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || c.timeout < 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.timeout)
}

func (c *Client) opts(extra []grpc.CallOption) []grpc.CallOption {
	if len(extra) == 0 {
		return c.callOpts
	}
	return append(append([]grpc.CallOption{}, c.callOpts...), extra...)
}

// ListMessages returns one page of the caller's feed, newest first. An
// empty NextPageToken means it is the last page. Errors are *Error.
func (c *Client) ListMessages(ctx context.Context, req *gf.ListMessagesRequest, opts ...grpc.CallOption) (*gf.ListMessagesResponse, error) {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	resp, err := c.feed.ListMessages(ctx, req, c.opts(opts)...)
	if err != nil {
		return nil, FromError(err)
	}
	return resp, nil
}

// GetReadModel says which read model the rollout gives (event, user), its
// bucket, the rule that decided and the config revision. A guest may ask
// about themselves; anyone else needs a service_role token. Errors are *Error.
func (c *Client) GetReadModel(ctx context.Context, eventID, userID string, opts ...grpc.CallOption) (*gf.GetReadModelResponse, error) {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	req := &gf.GetReadModelRequest{EventId: eventID, UserId: userID}
	resp, err := c.rollout.GetReadModel(ctx, req, c.opts(opts)...)
	if err != nil {
		return nil, FromError(err)
	}
	return resp, nil
}

// Messages returns an iterator over the feed req names, from req.PageToken
// (empty: the newest message) to the start of history, one ListMessages
// call per page, each with the default deadline. req is not modified.
//
//	it := client.Messages(ctx, &gf.ListMessagesRequest{EventId: id, PageSize: 50})
//	for it.Next() {
//		use(it.Message())
//	}
//	if err := it.Err(); err != nil { ... }
//
// After an error, NextPageToken resumes after the last complete page.
func (c *Client) Messages(ctx context.Context, req *gf.ListMessagesRequest, opts ...grpc.CallOption) *MessageIterator {
	if req == nil {
		req = &gf.ListMessagesRequest{}
	}
	first := proto.Clone(req).(*gf.ListMessagesRequest)
	return &MessageIterator{client: c, ctx: ctx, req: first, opts: opts, token: first.GetPageToken()}
}

// ForEachMessage calls fn with every message of the feed, newest first,
// across pages. It stops at the first error, fn's included, and returns it.
func (c *Client) ForEachMessage(ctx context.Context, req *gf.ListMessagesRequest, fn func(*gf.GuestMessage) error, opts ...grpc.CallOption) error {
	it := c.Messages(ctx, req, opts...)
	for it.Next() {
		if err := fn(it.Message()); err != nil {
			return err
		}
	}
	return it.Err()
}

// MessageIterator walks a feed page by page. Not safe for concurrent use.
type MessageIterator struct {
	client *Client
	ctx    context.Context
	req    *gf.ListMessagesRequest
	opts   []grpc.CallOption
	page   *gf.ListMessagesResponse
	index  int
	token  string // where the next page starts
	pages  int
	done   bool
	err    error
}

// Next advances to the next message, fetching the next page when needed.
// It returns false at the end of the feed or on an error (see Err).
func (it *MessageIterator) Next() bool {
	for {
		if it.page != nil && it.index+1 < len(it.page.GetMessages()) {
			it.index++
			return true
		}
		if it.done || it.err != nil {
			return false
		}
		if it.page != nil && it.token == "" {
			it.done = true
			return false
		}
		it.req.PageToken = it.token
		page, err := it.client.ListMessages(it.ctx, it.req, it.opts...)
		if err != nil {
			it.err = err
			return false
		}
		it.page, it.index, it.pages = page, -1, it.pages+1
		if next := page.GetNextPageToken(); next != "" && next == it.token {
			it.err = &Error{Code: codes.Internal, Message: "guestfeed: the server returned the same page token again"}
			return false
		}
		it.token = page.GetNextPageToken()
	}
}

// Message is the current message (valid after Next returned true).
func (it *MessageIterator) Message() *gf.GuestMessage {
	if it.page == nil || it.index < 0 || it.index >= len(it.page.GetMessages()) {
		return nil
	}
	return it.page.GetMessages()[it.index]
}

// Page is the response the current message came from (its ReadModel,
// WatchToken on the first page); nil before the first page.
func (it *MessageIterator) Page() *gf.ListMessagesResponse { return it.page }

// Pages is how many pages have been fetched.
func (it *MessageIterator) Pages() int { return it.pages }

// NextPageToken resumes after the last page fetched (empty at the end of
// the feed): send it as page_token to continue, after an error for instance.
func (it *MessageIterator) NextPageToken() string { return it.token }

// Err is the error that stopped the iteration (an *Error), or nil.
func (it *MessageIterator) Err() error { return it.err }
