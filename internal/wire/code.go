package wire

import "fmt"

// Code is the machine-readable reason carried by an ERROR frame.
type Code uint16

// Error codes. Fatal codes are followed by the server closing the
// connection; the others fail only the request they answer.
const (
	CodeMalformed     Code = 1  // fatal: the byte stream or its descriptors break the framing rules
	CodeVersion       Code = 2  // fatal: no protocol version in common
	CodeUnknownOp     Code = 3  // the operation is not known
	CodeBadQueueName  Code = 4  // the queue name breaks the naming rules
	CodeTooLarge      Code = 5  // the payload exceeds the server's maximum
	CodeEmpty         Code = 6  // the queue holds no message
	CodeBadPage       Code = 7  // the descriptor is not a sealed memfd of the declared size
	CodeCancelled     Code = 8  // a waiting RETRIEVE was cancelled by CANCEL
	CodeShuttingDown  Code = 9  // fatal: the server is stopping
	CodeLimit         Code = 10 // a configured limit or quota was reached
	CodeInternal      Code = 11 // the server failed; the request may be retried
	CodeBadDescriptor Code = 12 // a STORE's descriptor was missing, or present with an inline payload
	CodeBadRequest    Code = 13 // a well-framed request whose body does not parse
	CodeDenied        Code = 14 // fatal: the peer's user and groups are not allowed to connect
	CodeForbidden     Code = 15 // the named queue belongs to another user, or is not the caller's as OWNED asked
	CodeInUse         Code = 16 // the queue still holds messages or has waiters
	CodeStale         Code = 17 // the delivery token is not pending on this connection
	CodeNoGroup       Code = 18 // the queue has no consumer group of that name
)

var codeNames = map[Code]string{
	CodeMalformed:     "MALFORMED",
	CodeVersion:       "VERSION",
	CodeUnknownOp:     "UNKNOWN_OP",
	CodeBadQueueName:  "BAD_QUEUE_NAME",
	CodeTooLarge:      "TOO_LARGE",
	CodeEmpty:         "EMPTY",
	CodeBadPage:       "BAD_PAGE",
	CodeCancelled:     "CANCELLED",
	CodeShuttingDown:  "SHUTTING_DOWN",
	CodeLimit:         "LIMIT",
	CodeInternal:      "INTERNAL",
	CodeBadDescriptor: "BAD_DESCRIPTOR",
	CodeBadRequest:    "BAD_REQUEST",
	CodeDenied:        "DENIED",
	CodeForbidden:     "FORBIDDEN",
	CodeInUse:         "IN_USE",
	CodeStale:         "STALE",
	CodeNoGroup:       "NO_GROUP",
}

// String returns the code's protocol name, such as "EMPTY".
func (c Code) String() string {
	if n, ok := codeNames[c]; ok {
		return n
	}
	return fmt.Sprintf("CODE_%d", uint16(c))
}

// Fatal reports whether the server closes the connection after sending c.
func (c Code) Fatal() bool {
	return c == CodeMalformed || c == CodeVersion || c == CodeShuttingDown || c == CodeDenied
}
