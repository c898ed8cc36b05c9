package machq

import "github.com/machq/machq/internal/version"

// Version describes the build of this library: its module version, or
// "devel" with the revision for a build from a checkout, and the Go
// version, for example "v1.2.0 (go1.26.8)".
func Version() string { return version.String() }

// ServerVersion returns what the server said of its build at the
// handshake, such as "machqd v1.2.0 (go1.26.8)", or "" if it did not say
// (servers before this field was added).
func (c *Client) ServerVersion() string { return c.welcome.Software }
