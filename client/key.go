package client

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	pb "github.com/connsync/connsync/api/connsync/v1"
)

var protocolNumbers = map[string]uint32{"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "icmpv6": 58, "sctp": 132}

// ParseProtocol accepts a protocol name (tcp, udp, sctp, icmp, icmpv6, gre,
// esp) or number (0-255).
func ParseProtocol(s string) (uint32, error) {
	if n, ok := protocolNumbers[strings.ToLower(s)]; ok {
		return n, nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("protocol %q: want tcp, udp, sctp, icmp, icmpv6, gre, esp or a number 0-255", s)
	}
	return uint32(n), nil
}

// Key builds a connection key from a protocol and two endpoints written as
// host:port ("10.0.0.1:1234", "[2001:db8::1]:443"), or as a bare address
// (port 0) for protocols without ports such as ICMP or GRE. The server
// canonicalises it; validation of the values is the server's.
func Key(zone, protocol, src, dst string) (*pb.ConnKey, error) {
	p, err := ParseProtocol(protocol)
	if err != nil {
		return nil, err
	}
	k := &pb.ConnKey{Zone: zone, Protocol: p}
	for _, e := range []struct {
		name, v string
		ip      *string
		port    *uint32
	}{{"source", src, &k.SrcIp, &k.SrcPort}, {"destination", dst, &k.DstIp, &k.DstPort}} {
		host, port, err := net.SplitHostPort(e.v)
		if err != nil {
			if _, perr := netip.ParseAddr(e.v); perr != nil {
				return nil, fmt.Errorf("%s %q: want IP:PORT (IPv6 as [IP]:PORT), or a bare IP for protocols without ports", e.name, e.v)
			}
			host, port = e.v, "0"
		}
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("%s %q: port must be 0-65535", e.name, e.v)
		}
		*e.ip, *e.port = host, uint32(n)
	}
	return k, nil
}
