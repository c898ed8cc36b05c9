package machq

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// ErrUnknownOutcome: the connection was lost after a request was sent and
// before its answer came: the request may or may not have taken effect
// (a store may have been stored, a plain retrieve may have taken a
// message that is now lost). Reconnecting never guesses: it reports this
// instead of retrying. Errors wrapping it also wrap ErrClosed.
var ErrUnknownOutcome = errors.New("machq: outcome unknown: the connection was lost before the server answered")

// notSentError is the error of a request that was never sent: the
// connection had ended already. Retrying it elsewhere is safe.
type notSentError struct{ err error }

func (e *notSentError) Error() string { return e.err.Error() }
func (e *notSentError) Unwrap() error { return e.err }

// Reconnecting is a client that dials its server again, with backoff,
// whenever the connection is lost (the server restarted, say), for as
// long as each call's context allows. It is safe for concurrent use.
//
// A call whose request had not been sent when the connection was lost is
// sent again on the new connection. So is a call that is safe to repeat:
// Stat, Peek, and Reserve and ReserveWait, since a message delivered in
// ack mode on a lost connection went back to its queue (a waiting
// ReserveWait waits again on the new connection). Any other call whose
// request was sent and not answered fails with an error wrapping
// ErrUnknownOutcome: a Send may or may not have stored its message; a
// plain Retrieve or RetrieveWait may have taken a message that is lost
// with the connection. Nothing is guessed.
//
// A connection's private queue, the deliveries taken on it and the
// client-side digest records end with it: a Delivery taken before a
// reconnect can no longer be settled (its settle fails with an error
// wrapping ErrClosed; its message went back to its queue, or was lost
// with a server that stopped). Use named queues across reconnects.
type Reconnecting struct {
	target string
	opts   []Option
	first  time.Duration // first backoff
	most   time.Duration // longest backoff

	mu     sync.Mutex
	c      *Client
	dialed chan struct{} // closed when a dial in progress ends; nil if none
	closed bool
	dials  int // successful dials, the first included
}

// Reconnect backoff defaults: the first retry after 10 ms, doubling up to
// 1 s.
const (
	DefaultReconnectFirst = 10 * time.Millisecond
	DefaultReconnectMost  = time.Second
)

// DialReconnecting returns a Reconnecting client of the server at target
// (as Dial takes it), dialled with opts. It dials at once, retrying with
// backoff until ctx ends: a client started before its server works once
// the server is up. An untrusted server or a refused connection is not
// retried.
func DialReconnecting(ctx context.Context, target string, opts ...Option) (*Reconnecting, error) {
	r := &Reconnecting{target: target, opts: opts, first: DefaultReconnectFirst, most: DefaultReconnectMost}
	if _, err := r.client(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// Dials returns how many times the client has connected, the first
// included: more than 1 means it reconnected.
func (r *Reconnecting) Dials() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dials
}

// Close closes the connection; calls in progress fail with ErrClosed and
// no reconnect follows.
func (r *Reconnecting) Close() error {
	r.mu.Lock()
	r.closed = true
	c := r.c
	r.c = nil
	r.mu.Unlock()
	if c != nil {
		return c.Close()
	}
	return nil
}

// retryable reports whether a dial failure may pass: nothing answers yet,
// or the server is starting or stopping.
func retryable(err error) bool {
	return errors.Is(err, ErrNoServer) || errors.Is(err, ErrClosed) || errors.Is(err, ErrShuttingDown) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, ErrLimit) || errors.Is(err, ErrProtocol)
}

// client returns the current connection, dialling one, with backoff,
// until ctx ends if there is none.
func (r *Reconnecting) client(ctx context.Context) (*Client, error) {
	backoff := r.first
	for {
		r.mu.Lock()
		switch {
		case r.closed:
			r.mu.Unlock()
			return nil, ErrClosed
		case r.c != nil:
			c := r.c
			r.mu.Unlock()
			return c, nil
		case r.dialed != nil:
			// Someone is dialling: wait for them.
			ch := r.dialed
			r.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		ch := make(chan struct{})
		r.dialed = ch
		r.mu.Unlock()

		c, err := Dial(ctx, r.target, r.opts...)

		r.mu.Lock()
		r.dialed = nil
		close(ch)
		if err == nil {
			if r.closed {
				r.mu.Unlock()
				c.Close()
				return nil, ErrClosed
			}
			r.c = c
			r.dials++
			r.mu.Unlock()
			return c, nil
		}
		r.mu.Unlock()
		if !retryable(err) || ctx.Err() != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%w (while reconnecting: %v)", ctx.Err(), err)
			}
			return nil, err
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (while reconnecting: %v)", ctx.Err(), err)
		}
		backoff = min(2*backoff, r.most)
	}
}

// lost forgets c, whose connection failed, so that the next call dials.
func (r *Reconnecting) lost(c *Client) {
	r.mu.Lock()
	if r.c == c {
		r.c = nil
	}
	r.mu.Unlock()
	c.Close()
}

// do runs op on a connection. When the connection is lost, op runs again
// on a new one if its request was never sent or safe says repeating it
// is harmless; else the error wraps ErrUnknownOutcome.
func (r *Reconnecting) do(ctx context.Context, safe bool, op func(*Client) error) error {
	for {
		c, err := r.client(ctx)
		if err != nil {
			return err
		}
		err = op(c)
		if err == nil || !errors.Is(err, ErrClosed) || ctx.Err() != nil {
			return err
		}
		r.mu.Lock()
		closed := r.closed
		r.mu.Unlock()
		if closed {
			return err
		}
		r.lost(c)
		var ns *notSentError
		if !safe && !errors.As(err, &ns) {
			return fmt.Errorf("%w: %w", ErrUnknownOutcome, err)
		}
	}
}

// Send is Client.Send on the current connection.
func (r *Reconnecting) Send(ctx context.Context, queue string, data []byte) (seq uint64, err error) {
	err = r.do(ctx, false, func(c *Client) error { seq, err = c.Send(ctx, queue, data); return err })
	return seq, err
}

// SendPage is Client.SendPage on the current connection. A page whose
// outcome is unknown stays valid for a retry, as after any failure that
// is not the page's own.
func (r *Reconnecting) SendPage(ctx context.Context, queue string, p *Page) (seq uint64, err error) {
	err = r.do(ctx, false, func(c *Client) error { seq, err = c.SendPage(ctx, queue, p); return err })
	return seq, err
}

// Retrieve is Client.Retrieve on the current connection.
func (r *Reconnecting) Retrieve(ctx context.Context, queue string) (m *Message, err error) {
	err = r.do(ctx, false, func(c *Client) error { m, err = c.Retrieve(ctx, queue); return err })
	return m, err
}

// RetrieveWait is Client.RetrieveWait on the current connection.
func (r *Reconnecting) RetrieveWait(ctx context.Context, queue string) (m *Message, err error) {
	err = r.do(ctx, false, func(c *Client) error { m, err = c.RetrieveWait(ctx, queue); return err })
	return m, err
}

// Reserve is Client.Reserve on the current connection, repeated on a new
// one if the connection is lost.
func (r *Reconnecting) Reserve(ctx context.Context, queue string, o *AckOptions) (d *Delivery, err error) {
	err = r.do(ctx, true, func(c *Client) error { d, err = c.Reserve(ctx, queue, o); return err })
	return d, err
}

// ReserveWait is Client.ReserveWait on the current connection; a wait
// cut short by a lost connection waits again on a new one.
func (r *Reconnecting) ReserveWait(ctx context.Context, queue string, o *AckOptions) (d *Delivery, err error) {
	err = r.do(ctx, true, func(c *Client) error { d, err = c.ReserveWait(ctx, queue, o); return err })
	return d, err
}

// Peek is Client.Peek on the current connection.
func (r *Reconnecting) Peek(ctx context.Context, queue string, i int) (m *Message, err error) {
	err = r.do(ctx, true, func(c *Client) error { m, err = c.Peek(ctx, queue, i); return err })
	return m, err
}

// Stat is Client.Stat on the current connection.
func (r *Reconnecting) Stat(ctx context.Context) (s *Stats, err error) {
	err = r.do(ctx, true, func(c *Client) error { s, err = c.Stat(ctx); return err })
	return s, err
}
