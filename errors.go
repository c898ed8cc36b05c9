package machq

import (
	"errors"
	"fmt"

	"github.com/machq/machq/internal/wire"
)

// Sentinel errors. Test for them with errors.Is; the errors returned carry
// more detail.
var (
	// ErrNoServer: nothing answers at the service name or socket path.
	ErrNoServer = errors.New("machq: no server")
	// ErrEmpty: the queue holds no message (or none arrived in time).
	ErrEmpty = errors.New("machq: queue is empty")
	// ErrTooLarge: the payload exceeds the server's maximum message size.
	ErrTooLarge = errors.New("machq: message too large")
	// ErrBadQueueName: the queue name breaks the rules: 1 to 255
	// characters from [A-Za-z0-9._-].
	ErrBadQueueName = errors.New("machq: bad queue name")
	// ErrTampered: a retrieved payload does not match its digest, or
	// (WithRequiredDigest) carries no digest the client accepts.
	ErrTampered = errors.New("machq: integrity check failed: data was tampered with")
	// ErrClosed: the connection is closed, by Close or because it failed
	// (the server stopped or restarted); Dial again.
	ErrClosed = errors.New("machq: connection closed")
	// ErrBadPage: the server refused a page that is not a memfd sealed
	// against write, grow and shrink, or whose size differs from the
	// declared one.
	ErrBadPage = errors.New("machq: server refused the page")
	// ErrProtocol: the peer broke the protocol; the connection is closed.
	ErrProtocol = errors.New("machq: protocol error")
	// ErrShuttingDown: the server is stopping; reconnect to a new instance.
	ErrShuttingDown = errors.New("machq: server shutting down")
	// ErrCancelled: the server cancelled the request.
	ErrCancelled = errors.New("machq: request cancelled")
	// ErrLimit: a server limit or quota was reached.
	ErrLimit = errors.New("machq: server limit reached")
	// ErrDenied: the server does not admit this process's user or groups,
	// or the named queue belongs to another user.
	ErrDenied = errors.New("machq: access denied")
	// ErrUntrustedServer: Dial refused the server before sending it
	// anything: it runs as a user this process does not trust, or its
	// service's runtime directory or socket file could let another user
	// stand in for it. The error says what was found and what to do;
	// WithServerUID trusts another user's server.
	ErrUntrustedServer = errors.New("machq: untrusted server")
	// ErrInUse: Disown found the queue holding messages or waiting
	// retrieves; retrieve or cancel them first.
	ErrInUse = errors.New("machq: queue in use")
)

// ErrorCode is the machine-readable reason the server gives for a failed
// request. docs/PROTOCOL.md lists the codes.
type ErrorCode uint16

// Error codes sent by the server; docs/PROTOCOL.md section 7 says when.
const (
	CodeMalformed     ErrorCode = 1  // fatal: the stream broke the framing rules
	CodeVersion       ErrorCode = 2  // fatal: no protocol version in common
	CodeUnknownOp     ErrorCode = 3  // the operation is not known
	CodeBadQueueName  ErrorCode = 4  // the queue name breaks the rules
	CodeTooLarge      ErrorCode = 5  // the payload exceeds the server's maximum
	CodeEmpty         ErrorCode = 6  // the queue holds no message
	CodeBadPage       ErrorCode = 7  // not a sealed memfd of the declared size
	CodeCancelled     ErrorCode = 8  // a waiting retrieve was cancelled
	CodeShuttingDown  ErrorCode = 9  // fatal: the server is stopping
	CodeLimit         ErrorCode = 10 // a limit or quota was reached
	CodeInternal      ErrorCode = 11 // the server failed
	CodeBadDescriptor ErrorCode = 12 // a descriptor was missing or not expected
	CodeBadRequest    ErrorCode = 13 // a request body that does not parse
	CodeDenied        ErrorCode = 14 // fatal: this user may not connect
	CodeForbidden     ErrorCode = 15 // the named queue belongs to another user
	CodeInUse         ErrorCode = 16 // DISOWN: the queue still holds messages or waiters
	CodeStale         ErrorCode = 17 // the delivery is no longer pending with this client
	CodeNoGroup       ErrorCode = 18 // the queue has no consumer group of that name
)

// String returns the code's protocol name, such as "EMPTY".
func (c ErrorCode) String() string { return wire.Code(c).String() }

// ServerError is a request the server refused.
type ServerError struct {
	Code    ErrorCode
	Message string // the server's explanation
}

// Error returns the code and the server's explanation.
func (e *ServerError) Error() string {
	return fmt.Sprintf("machq: %s (server error %s)", e.Message, e.Code)
}

// Is makes errors.Is(err, ErrEmpty) and the like work for server errors.
func (e *ServerError) Is(target error) bool {
	switch e.Code {
	case CodeEmpty:
		return target == ErrEmpty
	case CodeTooLarge:
		return target == ErrTooLarge
	case CodeBadQueueName:
		return target == ErrBadQueueName
	case CodeBadPage, CodeBadDescriptor:
		return target == ErrBadPage
	case CodeMalformed, CodeVersion, CodeUnknownOp, CodeBadRequest:
		return target == ErrProtocol
	case CodeShuttingDown:
		return target == ErrShuttingDown
	case CodeCancelled:
		return target == ErrCancelled
	case CodeLimit:
		return target == ErrLimit
	case CodeDenied, CodeForbidden:
		return target == ErrDenied
	case CodeInUse:
		return target == ErrInUse
	case CodeStale:
		return target == ErrStale
	case CodeNoGroup:
		return target == ErrNoGroup
	}
	return false
}

// TamperedError describes a payload whose digest did not match.
type TamperedError struct {
	Queue  string // "" for the private queue
	Seq    uint64
	Reason string
	// Unverifiable: the payload could not be checked (no digest, or one
	// this client does not know or accept), rather than found not to
	// match; another consumer may be able to check it.
	Unverifiable bool
}

// Error says which message failed its integrity check and why.
func (e *TamperedError) Error() string {
	q := e.Queue
	if q == "" {
		q = "(private)"
	}
	return fmt.Sprintf("machq: WARNING: integrity check failed for message %d of queue %s: %s", e.Seq, q, e.Reason)
}

// Unwrap returns ErrTampered.
func (e *TamperedError) Unwrap() error { return ErrTampered }
