package server

// Spinning returns how many connections' readers are spinning now.
func (s *Server) Spinning() int { return s.spin.Running() }

// LimitNamed is limitNamed, for tests.
var LimitNamed = limitNamed
