package machq

import (
	"testing"

	"github.com/machq/machq/internal/wire"
)

// The exported codes and digests are written out for readers of the
// documentation; they must stay equal to the wire protocol's.
func TestExportedConstantsMatchTheWire(t *testing.T) {
	codes := map[ErrorCode]wire.Code{
		CodeMalformed: wire.CodeMalformed, CodeVersion: wire.CodeVersion, CodeUnknownOp: wire.CodeUnknownOp,
		CodeBadQueueName: wire.CodeBadQueueName, CodeTooLarge: wire.CodeTooLarge, CodeEmpty: wire.CodeEmpty,
		CodeBadPage: wire.CodeBadPage, CodeCancelled: wire.CodeCancelled, CodeShuttingDown: wire.CodeShuttingDown,
		CodeLimit: wire.CodeLimit, CodeInternal: wire.CodeInternal, CodeBadDescriptor: wire.CodeBadDescriptor,
		CodeBadRequest: wire.CodeBadRequest, CodeDenied: wire.CodeDenied, CodeForbidden: wire.CodeForbidden,
	}
	if len(codes) != 15 {
		t.Fatalf("%d distinct codes, want 15", len(codes))
	}
	for c, w := range codes {
		if uint16(c) != uint16(w) || c.String() != w.String() {
			t.Errorf("code %d (%s) differs from the wire's %d (%s)", c, c, w, w)
		}
	}
	if uint8(DigestNone) != wire.DigestNone || uint8(DigestSHA256) != wire.DigestSHA256 || uint8(DigestBLAKE3) != wire.DigestBLAKE3 {
		t.Error("digest algorithms differ from the wire's")
	}
}
