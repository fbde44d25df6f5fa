package repl

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/connsync/connsync/fsm"
)

// Never is the delay of a class whose connections are never replicated.
const Never time.Duration = -1

// DelayClass says how long a new connection of a service waits before it is
// replicated. A connection closed within its delay is never sent; one that
// lives longer is sent then, with its state at that moment.
type DelayClass struct {
	Name string
	// Protocol is the IP protocol number; 0 matches every protocol.
	Protocol uint8
	// Ports are the service ports (a connection matches when its destination
	// or source port is one of them); empty matches every port.
	Ports []uint16
	// Delay is 0 (immediate), a duration, or Never.
	Delay time.Duration
}

// DefaultDelayClasses are the classes of a member started without its own:
// web and file-transfer services, whose connections are mostly short, wait
// 3 s; everything else is replicated at once.
func DefaultDelayClasses() []DelayClass {
	return []DelayClass{
		{Name: "web", Protocol: 6, Ports: []uint16{80, 443, 8080, 8443}, Delay: 3 * time.Second},
		{Name: "ftp", Protocol: 6, Ports: []uint16{20, 21}, Delay: 3 * time.Second},
		{Name: "default", Delay: 0},
	}
}

var (
	protoNames = map[string]uint8{"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58, "any": 0, "*": 0}
	protoName  = map[uint8]string{6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "icmpv6", 0: "any"}
)

// ParseDelayClasses parses classes written as
//
//	name=proto[:port,port,...]=delay;...
//
// e.g. "web=tcp:80,443=3s;dns=udp:53=never;default=any=0s". proto is a name
// (tcp, udp, sctp, icmp, icmpv6, any) or a number; delay a Go duration,
// "never" or "immediate". The first class that matches a connection wins.
func ParseDelayClasses(s string) ([]DelayClass, error) {
	var out []DelayClass
	for i, part := range strings.Split(s, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		fields := strings.Split(part, "=")
		if len(fields) != 3 {
			return nil, fmt.Errorf("delay class %d %q: want name=proto[:ports]=delay", i+1, part)
		}
		c := DelayClass{Name: strings.TrimSpace(fields[0])}
		if c.Name == "" {
			return nil, fmt.Errorf("delay class %d %q: the name is empty", i+1, part)
		}
		proto, ports, _ := strings.Cut(strings.TrimSpace(fields[1]), ":")
		if p, ok := protoNames[strings.ToLower(proto)]; ok {
			c.Protocol = p
		} else if n, err := strconv.ParseUint(proto, 10, 8); err == nil {
			c.Protocol = uint8(n)
		} else {
			return nil, fmt.Errorf("delay class %q: protocol %q is not a name (tcp, udp, sctp, icmp, icmpv6, any) or 0-255", c.Name, proto)
		}
		if ports != "" {
			for _, ps := range strings.Split(ports, ",") {
				n, err := strconv.ParseUint(strings.TrimSpace(ps), 10, 16)
				if err != nil || n == 0 {
					return nil, fmt.Errorf("delay class %q: port %q is not 1-65535", c.Name, ps)
				}
				c.Ports = append(c.Ports, uint16(n))
			}
		}
		switch d := strings.ToLower(strings.TrimSpace(fields[2])); d {
		case "never":
			c.Delay = Never
		case "immediate", "0":
			c.Delay = 0
		default:
			v, err := time.ParseDuration(d)
			if err != nil || v < 0 {
				return nil, fmt.Errorf("delay class %q: delay %q is not a duration >= 0, never or immediate", c.Name, d)
			}
			c.Delay = v
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no delay classes in %q", s)
	}
	return out, nil
}

// FormatDelayClasses is the inverse of ParseDelayClasses.
func FormatDelayClasses(cs []DelayClass) string {
	parts := make([]string, len(cs))
	for i, c := range cs {
		proto, ok := protoName[c.Protocol]
		if !ok {
			proto = strconv.Itoa(int(c.Protocol))
		}
		if len(c.Ports) > 0 {
			ps := make([]string, len(c.Ports))
			for j, p := range c.Ports {
				ps[j] = strconv.Itoa(int(p))
			}
			proto += ":" + strings.Join(ps, ",")
		}
		d := c.Delay.String()
		switch c.Delay {
		case Never:
			d = "never"
		case 0:
			d = "immediate"
		}
		parts[i] = c.Name + "=" + proto + "=" + d
	}
	return strings.Join(parts, ";")
}

// classify returns the delay of a new connection: that of the first class
// matching its protocol and one of its ports; immediate if none matches.
func classify(classes []DelayClass, proto uint8, srcPort, dstPort uint16) time.Duration {
	for _, c := range classes {
		if c.Protocol != 0 && c.Protocol != proto {
			continue
		}
		if len(c.Ports) > 0 && !slices.Contains(c.Ports, dstPort) && !slices.Contains(c.Ports, srcPort) {
			continue
		}
		return c.Delay
	}
	return 0
}

// delayer holds connections back until their delay has passed. It keeps one
// slot per tick of time; release hands back the ones whose time has come.
type delayer struct {
	mu    sync.Mutex
	tick  time.Duration
	slots map[int64][]delayed
	n     int
}

type delayed struct {
	bucket uint32
	key    fsm.Key
}

func newDelayer(tick time.Duration) *delayer {
	return &delayer{tick: tick, slots: map[int64][]delayed{}}
}

// add holds (bucket, key) until due.
func (d *delayer) add(bucket uint32, key fsm.Key, due time.Time) {
	slot := (due.UnixNano() + int64(d.tick) - 1) / int64(d.tick) // round up: never early
	d.mu.Lock()
	d.slots[slot] = append(d.slots[slot], delayed{bucket, key})
	d.n++
	d.mu.Unlock()
}

// due removes and returns everything due at or before now.
func (d *delayer) due(now time.Time) []delayed {
	slot := now.UnixNano() / int64(d.tick)
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []delayed
	for s, items := range d.slots {
		if s <= slot {
			out = append(out, items...)
			delete(d.slots, s)
		}
	}
	d.n -= len(out)
	return out
}

func (d *delayer) len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.n
}
