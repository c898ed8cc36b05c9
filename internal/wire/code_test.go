package wire_test

import (
	"testing"

	"github.com/machq/machq/internal/wire"
)

// TestCodeStringAndFatal checks every code against docs/PROTOCOL.md section
// 7: its number, its name, and whether the server closes the connection
// after sending it (codes 1, 2, 9 and 14).
func TestCodeStringAndFatal(t *testing.T) {
	for _, tc := range []struct {
		code  wire.Code
		num   uint16
		name  string
		fatal bool
	}{
		{wire.CodeMalformed, 1, "MALFORMED", true},
		{wire.CodeVersion, 2, "VERSION", true},
		{wire.CodeUnknownOp, 3, "UNKNOWN_OP", false},
		{wire.CodeBadQueueName, 4, "BAD_QUEUE_NAME", false},
		{wire.CodeTooLarge, 5, "TOO_LARGE", false},
		{wire.CodeEmpty, 6, "EMPTY", false},
		{wire.CodeBadPage, 7, "BAD_PAGE", false},
		{wire.CodeCancelled, 8, "CANCELLED", false},
		{wire.CodeShuttingDown, 9, "SHUTTING_DOWN", true},
		{wire.CodeLimit, 10, "LIMIT", false},
		{wire.CodeInternal, 11, "INTERNAL", false},
		{wire.CodeBadDescriptor, 12, "BAD_DESCRIPTOR", false},
		{wire.CodeBadRequest, 13, "BAD_REQUEST", false},
		{0, 0, "CODE_0", false},
		{wire.CodeDenied, 14, "DENIED", true},
		{wire.CodeForbidden, 15, "FORBIDDEN", false},
		{wire.CodeInUse, 16, "IN_USE", false},
		{wire.CodeStale, 17, "STALE", false},
		{wire.CodeNoGroup, 18, "NO_GROUP", false},
		{19, 19, "CODE_19", false},
		{0xffff, 0xffff, "CODE_65535", false},
	} {
		if uint16(tc.code) != tc.num {
			t.Errorf("%s has value %d, want %d", tc.name, uint16(tc.code), tc.num)
		}
		if got := tc.code.String(); got != tc.name {
			t.Errorf("Code(%d).String() = %q, want %q", tc.num, got, tc.name)
		}
		if got := tc.code.Fatal(); got != tc.fatal {
			t.Errorf("Code(%d).Fatal() = %v, want %v", tc.num, got, tc.fatal)
		}
	}
}
