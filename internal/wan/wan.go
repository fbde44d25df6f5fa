// Package wan emulates the delay of a wide-area link on a TCP connection,
// for tests and benchmarks that run two sites on one machine where the
// kernel cannot (no tc netem): connsyncd's -emulate-wan-delay and the
// tests' fault-injecting network both wrap the connections they dial with
// Delay.
package wan

import (
	"net"
	"sync"
	"time"
)

type chunk struct {
	at   time.Time
	data []byte
}

// delayedConn delays the bytes it writes and the bytes it reads by d each,
// so a link whose dialler side is wrapped is delayed by d in each direction.
type delayedConn struct {
	net.Conn
	d      time.Duration
	out    chan chunk
	in     chan chunk
	done   chan struct{}
	once   sync.Once
	mu     sync.Mutex // serialises Read; guards rest
	rest   []byte
	werr   chan error
	rerr   error // guarded by rerrMu
	rerrMu sync.Mutex
}

// Delay wraps c so that the bytes it writes and the bytes it reads each
// arrive d later: a connection whose dialling side is wrapped is delayed by d
// in each direction (a WAN link; the round trip grows by 2d). Order is kept;
// throughput is not limited.
func Delay(c net.Conn, d time.Duration) net.Conn {
	return newDelayedConn(c, d)
}

func newDelayedConn(c net.Conn, d time.Duration) *delayedConn {
	dc := &delayedConn{Conn: c, d: d, out: make(chan chunk, 4096), in: make(chan chunk, 4096),
		done: make(chan struct{}), werr: make(chan error, 1)}
	go dc.writer()
	go dc.reader()
	return dc
}

func (c *delayedConn) writer() {
	for {
		select {
		case <-c.done:
			return
		case ch := <-c.out:
			time.Sleep(time.Until(ch.at))
			if _, err := c.Conn.Write(ch.data); err != nil {
				select {
				case c.werr <- err:
				default:
				}
				c.Conn.Close()
				return
			}
		}
	}
}

func (c *delayedConn) reader() {
	defer close(c.in)
	for {
		buf := make([]byte, 64<<10)
		n, err := c.Conn.Read(buf)
		if n > 0 {
			select {
			case c.in <- chunk{time.Now().Add(c.d), buf[:n]}:
			case <-c.done:
				return
			}
		}
		if err != nil {
			c.rerrMu.Lock()
			c.rerr = err
			c.rerrMu.Unlock()
			return
		}
	}
}

func (c *delayedConn) Write(b []byte) (int, error) {
	select {
	case err := <-c.werr:
		return 0, err
	default:
	}
	data := append([]byte(nil), b...)
	select {
	case c.out <- chunk{time.Now().Add(c.d), data}:
		return len(b), nil
	case <-c.done:
		return 0, net.ErrClosed
	}
}

func (c *delayedConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.rest) == 0 {
		ch, ok := <-c.in
		if !ok {
			c.rerrMu.Lock()
			defer c.rerrMu.Unlock()
			if c.rerr == nil { // the reader stopped because the conn was closed
				return 0, net.ErrClosed
			}
			return 0, c.rerr
		}
		time.Sleep(time.Until(ch.at))
		c.rest = ch.data
	}
	n := copy(b, c.rest)
	c.rest = c.rest[n:]
	return n, nil
}

func (c *delayedConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return c.Conn.Close()
}
