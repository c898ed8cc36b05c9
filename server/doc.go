// Package server implements the machq message store, so that it can run
// inside any Go program as well as in the machqd daemon.
//
// A Server keeps one private FIFO queue per connection and any number of
// named queues shared by every connection. Payloads arrive either inline
// (small ones) or as sealed memfds passed with SCM_RIGHTS; the server
// checks a memfd's seals and size, stores the descriptor without reading
// or mapping it, and passes the same descriptor back on retrieve. When a
// connection ends, for whatever reason, its private queue and every page in
// it are freed at once.
//
// Typical use:
//
//	srv, err := server.New(server.Config{Logger: logger})
//	...
//	go srv.ListenAndServe(path) // or srv.Serve(l) with any *net.UnixListener
//	...
//	srv.Shutdown(ctx)
//
// Programs that only talk to a server should use the machq client package
// at the module root instead.
package server
