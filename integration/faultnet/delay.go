package faultnet

import (
	"slices"
	"time"
)

// Delay makes every connection dialled from then on between a member of
// group a and one of group b carry its bytes d later, each way (a WAN link
// between two sites: the round trip grows by 2d). Connections open already
// keep their delay. Order is kept; throughput is not limited.
func (h *Hub) Delay(a, b []string, d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.delay == nil {
		h.delay = map[[2]string]time.Duration{}
	}
	for _, x := range a {
		for _, y := range b {
			h.delay[[2]string{x, y}] = d
			h.delay[[2]string{y, x}] = d
		}
	}
}

// Reset closes every connection open between a member of group a and one
// of group b, so the next ones are dialled afresh (and get the delay of the
// moment).
func (h *Hub) Reset(a, b []string) {
	in := func(x string, g []string) bool { return slices.Contains(g, x) }
	h.mu.Lock()
	var victims []*conn
	for c := range h.conns {
		if in(c.from, a) && in(c.to, b) || in(c.from, b) && in(c.to, a) {
			victims = append(victims, c)
		}
	}
	h.mu.Unlock()
	for _, c := range victims {
		c.Close()
	}
}

// ClearDelays removes every delay (for connections dialled from now on).
func (h *Hub) ClearDelays() {
	h.mu.Lock()
	h.delay = nil
	h.mu.Unlock()
}

func (h *Hub) delayOf(from, to string) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.delay[[2]string{from, to}]
}
