package server

// Spinning returns how many connections' readers are spinning now.
func (s *Server) Spinning() int { return s.spin.Running() }

// LimitOf and RefusalError are limitOf and refusalError, for tests.
var (
	LimitOf      = limitOf
	RefusalError = refusalError
)

// Hang holds the server's lock, as a deadlock would, until the returned
// function is called.
func (s *Server) Hang() (release func()) {
	s.mu.Lock()
	return s.mu.Unlock
}
