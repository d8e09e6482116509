package guestfeed

import (
	"context"
	"errors"
	"fmt"

	rpc "github.com/guestfeed/guestfeed/generated/go/google/rpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is every failure a Client returns: the status and its AIP-193
// details. Get it with errors.As, or FromError. status.Code(err) and
// status.FromError(err) work on it too (it has GRPCStatus).
type Error struct {
	// Code is the canonical status code.
	Code codes.Code
	// Message is the status message (what to fix, for the service's errors).
	Message string
	// Reason is google.rpc.ErrorInfo.reason, e.g. NOT_EVENT_GUEST; empty when
	// the status has no ErrorInfo (a transport failure, a local deadline).
	Reason string
	// Domain is ErrorInfo.domain ("guestfeed.v1" for the service's errors).
	Domain string
	// Metadata is ErrorInfo.metadata, e.g. scope and limit of STREAM_LIMIT.
	Metadata map[string]string
	// FieldViolations maps a field to its description, from google.rpc.BadRequest.
	FieldViolations map[string]string
	// ViolationReasons maps a field to its machine-readable reason
	// (e.g. INVALID_UUID), from the same.
	ViolationReasons map[string]string
	// Details are the status details as decoded (*rpc.ErrorInfo,
	// *rpc.BadRequest, other registered messages, or the decoding error of an
	// unknown type).
	Details []interface{}

	status *status.Status
}

// Error reads like "PERMISSION_DENIED: you are not an active guest of this event".
func (e *Error) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("%s: %s (%s)", rpc.Code(e.Code), e.Message, e.Reason)
	}
	return fmt.Sprintf("%s: %s", rpc.Code(e.Code), e.Message)
}

// GRPCStatus is the status the error came from, so status.Code(err) and
// status.FromError(err) see through *Error.
func (e *Error) GRPCStatus() *status.Status {
	if e.status == nil {
		return status.New(e.Code, e.Message)
	}
	return e.status
}

// FromError turns any error from a gRPC call into an *Error (nil stays nil,
// an *Error is returned as it is). A context error becomes DEADLINE_EXCEEDED
// or CANCELLED; anything else without a status is UNKNOWN.
//
// The details are decoded by status.Details(), which in grpc-go 1.33 looks
// each google.protobuf.Any up in golang/protobuf's registry; this package
// imports generated/go/google/rpc, whose init registers google.rpc.ErrorInfo
// and google.rpc.BadRequest there.
func FromError(err error) *Error {
	if err == nil {
		return nil
	}
	var own *Error
	if errors.As(err, &own) {
		return own
	}
	st, ok := status.FromError(err)
	if !ok {
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			st = status.New(codes.DeadlineExceeded, err.Error())
		case errors.Is(err, context.Canceled):
			st = status.New(codes.Canceled, err.Error())
		default:
			st = status.New(codes.Unknown, err.Error())
		}
	}
	out := &Error{Code: st.Code(), Message: st.Message(), status: st}
	for _, detail := range st.Details() {
		out.Details = append(out.Details, detail)
		switch d := detail.(type) {
		case *rpc.ErrorInfo:
			out.Reason, out.Domain = d.GetReason(), d.GetDomain()
			out.Metadata = d.GetMetadata()
		case *rpc.BadRequest:
			for _, v := range d.GetFieldViolations() {
				if out.FieldViolations == nil {
					out.FieldViolations = map[string]string{}
					out.ViolationReasons = map[string]string{}
				}
				out.FieldViolations[v.GetField()] = v.GetDescription()
				out.ViolationReasons[v.GetField()] = v.GetReason()
			}
		}
	}
	return out
}

// Reason is the ErrorInfo reason of err ("" when it has none).
func Reason(err error) string {
	if e := FromError(err); e != nil {
		return e.Reason
	}
	return ""
}
