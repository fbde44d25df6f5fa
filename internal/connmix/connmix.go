// Package connmix is the connection mix the selective-sync measurements
// drive (server/repl's BenchmarkSelectiveSync in one process, connsync-bench
// selective-sync on processes): many short connections and some long ones
// to one TCP service, on the scale of that service's delay class, so that
// the delay classes' saving can be compared with the same run without them.
package connmix

import (
	"context"
	"net/netip"
	"time"

	pb "github.com/connsync/connsync/api/connsync/v1"
)

// Port is the mix's service port (TCP); a delay class for it delays the mix.
const Port = 5000

// Tick is how often the mix's events are published.
const Tick = 10 * time.Millisecond

// Run publishes the mix on the scale of delay, perTick new connections
// every Tick for 3 delays: 70% close a third of a delay after they opened
// (before their delay class lets them be replicated), 30% after three
// delays and a third; each is updated at 1/15 and 1/5 of the delay, the long
// ones every 2/3 of a delay after; whatever is open after 7 delays is
// closed. It stops when every connection is closed, when publish fails or
// when ctx ends, and returns how many connections it opened.
func Run(ctx context.Context, delay time.Duration, perTick int, publish func([]*pb.ConnEvent) error) (int, error) {
	type live struct {
		i                 int
		birth, life, next time.Duration
	}
	var conns []live
	start := time.Now()
	n := 0
	for step := 1; ; step++ {
		now := time.Since(start)
		var evs []*pb.ConnEvent
		if now < 3*delay {
			for range perTick {
				life := delay / 3
				if n%10 >= 7 {
					life = 3*delay + delay/3
				}
				conns = append(conns, live{i: n, birth: now, life: life, next: delay / 15})
				evs = append(evs, &pb.ConnEvent{Type: pb.ConnEventType_CONN_EVENT_TYPE_CREATED, State: State(n, 0)})
				n++
			}
		}
		kept := conns[:0]
		for _, c := range conns {
			age := now - c.birth
			switch {
			case age >= c.life || now >= 7*delay:
				evs = append(evs, &pb.ConnEvent{Type: pb.ConnEventType_CONN_EVENT_TYPE_CLOSED, State: State(c.i, 0)})
				continue
			case age >= c.next:
				evs = append(evs, &pb.ConnEvent{Type: pb.ConnEventType_CONN_EVENT_TYPE_UPDATED, State: State(c.i, byte(age/Tick))})
				if c.next == delay/15 {
					c.next = delay / 5
				} else {
					c.next += 2 * delay / 3
				}
			}
			kept = append(kept, c)
		}
		conns = kept
		if len(evs) > 0 {
			if err := publish(evs); err != nil {
				return n, err
			}
		}
		if now >= 3*delay && len(conns) == 0 {
			return n, nil
		}
		select {
		case <-ctx.Done():
			return n, ctx.Err()
		case <-time.After(time.Until(start.Add(time.Duration(step) * Tick))):
		}
	}
}

// State is connection i of the mix at update v: an established TCP
// connection with both windows, as a firewall reports one.
func State(i int, v byte) *pb.ConnState {
	return &pb.ConnState{
		Key: &pb.ConnKey{Protocol: 6, SrcIp: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String(),
			SrcPort: uint32(10000 + (i>>24)%50000), DstIp: "198.51.100.9", DstPort: Port},
		TcpState:   pb.TcpState_TCP_STATE_ESTABLISHED,
		TcpWindows: []*pb.TcpWindow{{End: uint32(i), MaxEnd: uint32(i) + 1000, MaxWin: 65535}, {End: 7, MaxEnd: 9, MaxWin: 512}},
		TimeoutMs:  3600_000,
		Blob:       []byte{v},
	}
}
