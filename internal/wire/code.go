package wire

import "fmt"

// Code is the machine-readable reason carried by an ERROR frame.
type Code uint16

// Error codes. Fatal codes are followed by the server closing the
// connection; the others fail only the request they answer.
const (
	CodeMalformed     Code = 1  // fatal: bytes that are not a valid frame
	CodeVersion       Code = 2  // fatal: no protocol version in common
	CodeUnknownOp     Code = 3  // the operation is not known
	CodeBadQueueName  Code = 4  // the queue name breaks the naming rules
	CodeTooLarge      Code = 5  // the payload exceeds the server's maximum
	CodeEmpty         Code = 6  // the queue holds no message
	CodeBadPage       Code = 7  // the descriptor is not a sealed memfd of the declared size
	CodeCancelled     Code = 8  // the request was cancelled or its wait expired
	CodeShuttingDown  Code = 9  // the server is stopping
	CodeLimit         Code = 10 // a configured limit or quota was reached
	CodeInternal      Code = 11 // the server failed; the request may be retried
	CodeBadDescriptor Code = 12 // a descriptor was missing or not expected
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
	return c == CodeMalformed || c == CodeVersion
}
