package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/connsync/connsync/api/connsync/v1"
)

func TestParseKey_BothDirectionsSameKey(t *testing.T) {
	cases := []struct {
		name             string
		zone             string
		proto            uint32
		a                string
		ap               uint32
		b                string
		bp               uint32
		wantSrc, wantDst string // canonical (lower) endpoint first
		wantSP, wantDP   uint32
	}{
		{"ipv4 tcp", "", 6, "10.0.0.1", 40000, "192.168.1.1", 443, "10.0.0.1", "192.168.1.1", 40000, 443},
		{"ipv4 udp zone", "vrf-blue", 17, "172.16.0.9", 53, "172.16.0.3", 5353, "172.16.0.3", "172.16.0.9", 5353, 53},
		{"ipv4 same address ports decide", "", 6, "10.1.1.1", 9000, "10.1.1.1", 80, "10.1.1.1", "10.1.1.1", 80, 9000},
		{"ipv6 tcp", "", 6, "2001:db8::2", 443, "2001:db8::1", 51000, "2001:db8::1", "2001:db8::2", 51000, 443},
		{"ipv6 sctp zone", "z", 132, "fe80::1", 1, "::1", 2, "::1", "fe80::1", 2, 1},
		{"ipv6 non-canonical text", "", 6, "2001:DB8:0:0::0002", 443, "2001:db8::1", 51000, "2001:db8::1", "2001:db8::2", 51000, 443},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fwd := mustParse(t, c.zone, c.proto, c.a, c.ap, c.b, c.bp)
			rev := mustParse(t, c.zone, c.proto, c.b, c.bp, c.a, c.ap)
			if fwd != rev {
				t.Fatalf("directions differ: %s vs %s", fwd, rev)
			}
			p := fwd.Proto()
			want := &pb.ConnKey{Zone: c.zone, Protocol: c.proto, SrcIp: c.wantSrc, SrcPort: c.wantSP,
				DstIp: c.wantDst, DstPort: c.wantDP}
			if p.Zone != want.Zone || p.Protocol != want.Protocol || p.SrcIp != want.SrcIp ||
				p.SrcPort != want.SrcPort || p.DstIp != want.DstIp || p.DstPort != want.DstPort {
				t.Fatalf("Proto() = %v, want %v", p, want)
			}
			if fwd.Zone() != c.zone || uint32(fwd.Protocol()) != c.proto {
				t.Fatalf("Zone/Protocol = %q/%d", fwd.Zone(), fwd.Protocol())
			}
		})
	}
}

func TestParseKey_DistinctFlowsDistinctKeys(t *testing.T) {
	base := mustParse(t, "", 6, "10.0.0.1", 1000, "10.0.0.2", 80)
	others := []Key{
		mustParse(t, "", 17, "10.0.0.1", 1000, "10.0.0.2", 80),       // protocol
		mustParse(t, "z", 6, "10.0.0.1", 1000, "10.0.0.2", 80),       // zone
		mustParse(t, "", 6, "10.0.0.1", 1001, "10.0.0.2", 80),        // port
		mustParse(t, "", 6, "10.0.0.1", 80, "10.0.0.2", 1000),        // ports swapped between hosts
		mustParse(t, "", 6, "::ffff:10.0.0.3", 1000, "10.0.0.2", 80), // address
	}
	for _, o := range others {
		if o == base {
			t.Errorf("%s equals %s", o, base)
		}
	}
}

func TestParseKey_IPv4MappedEqualsIPv4(t *testing.T) {
	v4 := mustParse(t, "", 6, "192.0.2.1", 1234, "198.51.100.7", 80)
	cases := [][2]string{
		{"::ffff:192.0.2.1", "::ffff:198.51.100.7"},
		{"::ffff:192.0.2.1", "198.51.100.7"},
		{"192.0.2.1", "::ffff:c633:6407"},
	}
	for _, c := range cases {
		k := mustParse(t, "", 6, c[0], 1234, c[1], 80)
		if k != v4 {
			t.Errorf("%s / %s: key %s, want %s", c[0], c[1], k, v4)
		}
		if k[0] != 4 {
			t.Errorf("%s / %s: family byte %d, want 4", c[0], c[1], k[0])
		}
	}
	if p := v4.Proto(); p.SrcIp != "192.0.2.1" || p.DstIp != "198.51.100.7" {
		t.Errorf("Proto() = %v, want plain IPv4 text", p)
	}
}

func TestParseKey_MixedFamiliesRejected(t *testing.T) {
	for _, c := range [][2]string{{"10.0.0.1", "2001:db8::1"}, {"2001:db8::1", "10.0.0.1"}, {"::ffff:10.0.0.1", "::1"}} {
		_, err := ParseKey(&pb.ConnKey{Protocol: 6, SrcIp: c[0], SrcPort: 1, DstIp: c[1], DstPort: 2}, "key")
		expectFieldError(t, err, "key.dst_ip")
	}
}

func expectFieldError(t *testing.T, err error, field string) {
	t.Helper()
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v (%T) is not a *FieldError", err, err)
	}
	if fe.Field != field {
		t.Fatalf("FieldError.Field = %q, want %q (%v)", fe.Field, field, err)
	}
	if !strings.HasPrefix(err.Error(), field+": ") {
		t.Fatalf("Error() = %q does not start with the field name", err.Error())
	}
}

func TestParseKey_FieldErrors(t *testing.T) {
	ok := func() *pb.ConnKey {
		return &pb.ConnKey{Protocol: 6, SrcIp: "10.0.0.1", SrcPort: 1000, DstIp: "10.0.0.2", DstPort: 80}
	}
	cases := []struct {
		name  string
		mod   func(k *pb.ConnKey)
		field string
	}{
		{"empty src ip", func(k *pb.ConnKey) { k.SrcIp = "" }, "key.src_ip"},
		{"empty dst ip", func(k *pb.ConnKey) { k.DstIp = "" }, "key.dst_ip"},
		{"src ip octet 300", func(k *pb.ConnKey) { k.SrcIp = "300.1.1.1" }, "key.src_ip"},
		{"dst ip octet 300", func(k *pb.ConnKey) { k.DstIp = "300.1.1.1" }, "key.dst_ip"},
		{"src ip hostname", func(k *pb.ConnKey) { k.SrcIp = "localhost" }, "key.src_ip"},
		{"src ip with port", func(k *pb.ConnKey) { k.SrcIp = "10.0.0.1:80" }, "key.src_ip"},
		{"src ip cidr", func(k *pb.ConnKey) { k.SrcIp = "10.0.0.0/8" }, "key.src_ip"},
		{"src ipv6 zone", func(k *pb.ConnKey) { k.SrcIp, k.DstIp = "fe80::1%eth0", "fe80::2" }, "key.src_ip"},
		{"dst ipv6 zone", func(k *pb.ConnKey) { k.SrcIp, k.DstIp = "fe80::1", "fe80::2%1" }, "key.dst_ip"},
		{"mapped ipv6 zone", func(k *pb.ConnKey) { k.SrcIp = "::ffff:10.0.0.1%eth0" }, "key.src_ip"},
		{"src port 70000", func(k *pb.ConnKey) { k.SrcPort = 70000 }, "key.src_port"},
		{"dst port 65536", func(k *pb.ConnKey) { k.DstPort = 65536 }, "key.dst_port"},
		{"src port 0 tcp", func(k *pb.ConnKey) { k.SrcPort = 0 }, "key.src_port"},
		{"dst port 0 tcp", func(k *pb.ConnKey) { k.DstPort = 0 }, "key.dst_port"},
		{"src port 0 udp", func(k *pb.ConnKey) { k.Protocol, k.SrcPort = 17, 0 }, "key.src_port"},
		{"dst port 0 udp", func(k *pb.ConnKey) { k.Protocol, k.DstPort = 17, 0 }, "key.dst_port"},
		{"dst port 0 sctp", func(k *pb.ConnKey) { k.Protocol, k.DstPort = 132, 0 }, "key.dst_port"},
		{"dst port 0 dccp", func(k *pb.ConnKey) { k.Protocol, k.DstPort = 33, 0 }, "key.dst_port"},
		{"dst port 0 udplite", func(k *pb.ConnKey) { k.Protocol, k.DstPort = 136, 0 }, "key.dst_port"},
		{"icmp port 70000", func(k *pb.ConnKey) { k.Protocol, k.DstPort = 1, 70000 }, "key.dst_port"},
		{"zone 65 bytes", func(k *pb.ConnKey) { k.Zone = strings.Repeat("z", 65) }, "key.zone"},
		{"protocol 256", func(k *pb.ConnKey) { k.Protocol = 256 }, "key.protocol"},
		{"protocol max uint32", func(k *pb.ConnKey) { k.Protocol = 1<<32 - 1 }, "key.protocol"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k := ok()
			c.mod(k)
			got, err := ParseKey(k, "key")
			if got != "" {
				t.Errorf("returned key %q alongside an error", got)
			}
			expectFieldError(t, err, c.field)
		})
	}
	t.Run("nil key", func(t *testing.T) {
		_, err := ParseKey(nil, "keys[3]")
		expectFieldError(t, err, "keys[3]")
	})
	t.Run("prefix used", func(t *testing.T) {
		k := ok()
		k.DstPort = 0
		_, err := ParseKey(k, "keys[3]")
		expectFieldError(t, err, "keys[3].dst_port")
	})
}

func TestParseKey_Accepted(t *testing.T) {
	cases := []*pb.ConnKey{
		{Protocol: 1, SrcIp: "10.0.0.1", DstIp: "10.0.0.2"},                                                        // ICMP, ports 0
		{Protocol: 58, SrcIp: "2001:db8::1", DstIp: "2001:db8::2"},                                                 // ICMPv6, ports 0
		{Protocol: 0, SrcIp: "10.0.0.1", DstIp: "10.0.0.1"},                                                        // protocol 0, same host
		{Protocol: 255, SrcIp: "10.0.0.1", SrcPort: 65535, DstIp: "10.0.0.2", DstPort: 0},                          // protocol 255
		{Zone: strings.Repeat("z", MaxZoneLen), Protocol: 6, SrcIp: "::", SrcPort: 65535, DstIp: "::", DstPort: 1}, // longest zone
		{Protocol: 6, SrcIp: "0.0.0.0", SrcPort: 1, DstIp: "255.255.255.255", DstPort: 65535},
	}
	for _, c := range cases {
		k, err := ParseKey(c, "key")
		if err != nil {
			t.Errorf("ParseKey(%v): %v", c, err)
			continue
		}
		if k2, err := KeyFromBytes([]byte(k)); err != nil || k2 != k {
			t.Errorf("KeyFromBytes(ParseKey(%v)) = %q, %v", c, k2, err)
		}
	}
}

func TestKey_ProtoRoundTrip(t *testing.T) {
	keys := []Key{
		mustParse(t, "", 6, "10.0.0.2", 80, "10.0.0.1", 1000),
		mustParse(t, "vrf1", 17, "2001:db8::ff", 53, "2001:db8::1", 5353),
		mustParse(t, "", 1, "::ffff:1.2.3.4", 0, "5.6.7.8", 0),
		mustParse(t, strings.Repeat("x", MaxZoneLen), 132, "::", 1, "::", 2),
	}
	for _, k := range keys {
		p := k.Proto()
		k2, err := ParseKey(p, "key")
		if err != nil {
			t.Fatalf("ParseKey(%v): %v", p, err)
		}
		if k2 != k {
			t.Fatalf("round trip of %s gave %s", k, k2)
		}
		// The canonical form puts the lower endpoint first.
		src, dst := netip.MustParseAddr(p.SrcIp), netip.MustParseAddr(p.DstIp)
		if c := src.Compare(dst); c > 0 || (c == 0 && p.SrcPort > p.DstPort) {
			t.Fatalf("Proto() %v is not canonical", p)
		}
	}
	if s := keys[0].String(); s != "/6 10.0.0.1:1000-10.0.0.2:80" {
		t.Errorf("String() = %q", s)
	}
}

// v4Enc encodes a key by hand, endpoints in the given order.
func v4Enc(proto byte, zone string, a string, ap uint16, b string, bp uint16) []byte {
	buf := []byte{4, proto, byte(len(zone))}
	buf = append(buf, zone...)
	buf = append(buf, netip.MustParseAddr(a).AsSlice()...)
	buf = binary.BigEndian.AppendUint16(buf, ap)
	buf = append(buf, netip.MustParseAddr(b).AsSlice()...)
	buf = binary.BigEndian.AppendUint16(buf, bp)
	return buf
}

func v6Enc(proto byte, zone string, a string, ap uint16, b string, bp uint16) []byte {
	buf := []byte{6, proto, byte(len(zone))}
	buf = append(buf, zone...)
	a16, b16 := netip.MustParseAddr(a).As16(), netip.MustParseAddr(b).As16()
	buf = append(buf, a16[:]...)
	buf = binary.BigEndian.AppendUint16(buf, ap)
	buf = append(buf, b16[:]...)
	buf = binary.BigEndian.AppendUint16(buf, bp)
	return buf
}

func TestKeyFromBytes_Accepts(t *testing.T) {
	keys := []Key{
		mustParse(t, "", 6, "10.0.0.1", 1000, "10.0.0.2", 80),
		mustParse(t, "blue", 17, "2001:db8::1", 53, "2001:db8::2", 53),
		mustParse(t, "", 1, "10.0.0.1", 0, "10.0.0.1", 0),
	}
	for _, k := range keys {
		got, err := KeyFromBytes([]byte(k))
		if err != nil || got != k {
			t.Errorf("KeyFromBytes(%s) = %q, %v", k, got, err)
		}
	}
	// A hand-made encoding equal to ParseKey's is accepted.
	hand := v4Enc(6, "z", "10.0.0.1", 1000, "10.0.0.2", 80)
	if k, err := KeyFromBytes(hand); err != nil || k != mustParse(t, "z", 6, "10.0.0.2", 80, "10.0.0.1", 1000) {
		t.Errorf("KeyFromBytes(hand-made) = %q, %v", k, err)
	}
}

func TestKeyFromBytes_Rejects(t *testing.T) {
	v4 := []byte(mustParse(t, "zone", 6, "10.0.0.1", 1000, "10.0.0.2", 80))
	v6 := []byte(mustParse(t, "", 6, "2001:db8::1", 1000, "2001:db8::2", 80))
	bad := map[string][]byte{
		"nil":                        nil,
		"empty":                      {},
		"two bytes":                  {4, 6},
		"header only":                {4, 6, 0},
		"v4 extra byte":              append(append([]byte(nil), v4...), 0),
		"v6 extra byte":              append(append([]byte(nil), v6...), 0),
		"family 5":                   append([]byte{5}, v4[1:]...),
		"family 0":                   append([]byte{0}, v4[1:]...),
		"v4 bytes labelled v6":       append([]byte{6}, v4[1:]...),
		"v6 bytes labelled v4":       append([]byte{4}, v6[1:]...),
		"zone length too long":       append([]byte{4, 6, 65}, make([]byte, 65+12)...),
		"zone length beyond data":    {4, 6, 200, 1, 2, 3},
		"v4 swapped endpoints":       v4Enc(6, "", "10.0.0.2", 80, "10.0.0.1", 1000),
		"v4 swapped ports same host": v4Enc(6, "", "10.0.0.1", 9000, "10.0.0.1", 80),
		"v6 swapped endpoints":       v6Enc(6, "", "2001:db8::2", 80, "2001:db8::1", 1000),
		// IPv4-mapped IPv6 is always stored as IPv4; a family-6 encoding of
		// it would be a second Key for the same flow.
		"v6 encoding of mapped v4": v6Enc(6, "", "::ffff:10.0.0.1", 1000, "::ffff:10.0.0.2", 80),
		"v6 encoding, one mapped":  v6Enc(6, "", "::1", 1000, "::ffff:10.0.0.2", 80),
		// ParseKey never produces a zero port for TCP, UDP, ...
		"tcp port 0": v4Enc(6, "", "10.0.0.1", 0, "10.0.0.2", 80),
		"udp port 0": v6Enc(17, "", "::1", 53, "::2", 0),
	}
	for i := 1; i < len(v4); i++ {
		bad[fmt.Sprintf("v4 truncated to %d", i)] = v4[:i]
	}
	for i := 1; i < len(v6); i++ {
		bad[fmt.Sprintf("v6 truncated to %d", i)] = v6[:i]
	}
	for name, b := range bad {
		if k, err := KeyFromBytes(b); err == nil {
			t.Errorf("%s: KeyFromBytes(%x) accepted %q", name, b, k)
		}
	}
}

func TestKey_Bucket(t *testing.T) {
	seen := map[uint32]bool{}
	for p := uint32(1); p <= 2000; p++ {
		k := tcpKey(t, p)
		b := k.Bucket(DefaultBucketCount)
		if b >= DefaultBucketCount {
			t.Fatalf("Bucket = %d, want < %d", b, DefaultBucketCount)
		}
		for i := 0; i < 3; i++ {
			if again := k.Bucket(DefaultBucketCount); again != b {
				t.Fatalf("Bucket not stable: %d then %d", b, again)
			}
		}
		// Both directions land in the same bucket.
		if rev := mustParse(t, "", 6, "10.0.0.2", 80, "10.0.0.1", p).Bucket(DefaultBucketCount); rev != b {
			t.Fatalf("reverse direction bucket %d, want %d", rev, b)
		}
		// Smaller tables are the low bits of larger ones (power-of-two split).
		if small := k.Bucket(16); small != b&15 {
			t.Fatalf("Bucket(16) = %d, want %d", small, b&15)
		}
		if k.Bucket(1) != 0 {
			t.Fatalf("Bucket(1) = %d", k.Bucket(1))
		}
		seen[b] = true
	}
	// 2000 keys over 4096 buckets: a working hash spreads them widely.
	if len(seen) < 1000 {
		t.Fatalf("2000 keys fell into only %d buckets", len(seen))
	}
	// Pin the hash: the bucket is part of the persistent placement contract,
	// so changing the hash function must be a conscious decision.
	k := mustParse(t, "", 6, "10.0.0.1", 1000, "10.0.0.2", 80)
	if got, want := k.Bucket(DefaultBucketCount), uint32(1990); got != want {
		t.Fatalf("Bucket(%s) = %d, want %d (hash changed?)", k, got, want)
	}
}

func FuzzKeyFromBytes(f *testing.F) {
	f.Add([]byte(nil))
	f.Add([]byte{4, 6, 0})
	f.Add([]byte(mustParse(f, "", 6, "10.0.0.1", 1000, "10.0.0.2", 80)))
	f.Add([]byte(mustParse(f, "vrf", 17, "2001:db8::1", 53, "2001:db8::2", 53)))
	f.Add([]byte(mustParse(f, "", 1, "10.0.0.1", 0, "10.0.0.2", 0)))
	f.Add(v4Enc(6, "", "10.0.0.2", 80, "10.0.0.1", 1000))
	f.Add(v6Enc(6, "", "::ffff:10.0.0.1", 1000, "::ffff:10.0.0.2", 80))
	f.Add(v4Enc(6, "", "10.0.0.1", 0, "10.0.0.2", 80))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := KeyFromBytes(b)
		if err != nil {
			if k != "" {
				t.Fatalf("returned %q alongside error", k)
			}
			return
		}
		if string(k) != string(b) {
			t.Fatalf("accepted key %x differs from input %x", k, b)
		}
		p := k.Proto()
		k2, err := ParseKey(p, "key")
		if err != nil {
			t.Fatalf("KeyFromBytes accepted %x but ParseKey(%v) fails: %v", b, p, err)
		}
		if k2 != k {
			t.Fatalf("KeyFromBytes accepted %x but ParseKey(Proto()) gives %x", b, []byte(k2))
		}
		checkAppendProto(t, k)
		_ = k.String()
		if bk := k.Bucket(DefaultBucketCount); bk >= DefaultBucketCount {
			t.Fatalf("Bucket = %d", bk)
		}
	})
}

// AppendProto must write exactly what proto.Marshal writes for
// ProtoDirection, in both directions: the firewall decodes it as a ConnKey.
func TestKey_AppendProtoIsTheMarshalledKey(t *testing.T) {
	for _, k := range []Key{
		mustParse(t, "", 6, "10.0.0.2", 80, "10.0.0.1", 1000),
		mustParse(t, "vrf1", 17, "2001:db8::ff", 53, "2001:db8::1", 5353),
		mustParse(t, "", 1, "::ffff:1.2.3.4", 0, "5.6.7.8", 0),
		mustParse(t, "", 0, "10.0.0.1", 7, "10.0.0.1", 0),
		mustParse(t, strings.Repeat("x", MaxZoneLen), 132, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 65535, "::", 2),
	} {
		checkAppendProto(t, k)
	}
}

func checkAppendProto(t *testing.T, k Key) {
	t.Helper()
	for _, rev := range []bool{false, true} {
		want, err := proto.Marshal(k.ProtoDirection(rev))
		if err != nil {
			t.Fatal(err)
		}
		prefix := []byte{0xAA}
		if got := k.AppendProto(prefix, rev); string(got[1:]) != string(want) || got[0] != 0xAA {
			t.Fatalf("%s (reversed %v): AppendProto = %x, proto.Marshal = %x", k, rev, got[1:], want)
		}
	}
}

func TestKey_DirectionRoundTrip(t *testing.T) {
	for _, k := range []*pb.ConnKey{
		{Protocol: 6, SrcIp: "10.0.0.1", SrcPort: 1234, DstIp: "10.0.0.2", DstPort: 80},
		{Protocol: 6, SrcIp: "10.0.0.2", SrcPort: 80, DstIp: "10.0.0.1", DstPort: 1234},
		{Protocol: 17, SrcIp: "2001:db8::2", SrcPort: 53, DstIp: "2001:db8::1", DstPort: 5353, Zone: "vrf1"},
		{Protocol: 1, SrcIp: "10.0.0.9", DstIp: "10.0.0.9"},
	} {
		key, rev, err := ParseKeyDirection(k, "key")
		if err != nil {
			t.Fatal(err)
		}
		canon, _ := ParseKey(k, "key")
		if key != canon {
			t.Fatalf("%v: key differs from ParseKey's", k)
		}
		back := key.ProtoDirection(rev)
		if back.SrcIp != k.SrcIp || back.SrcPort != k.SrcPort || back.DstIp != k.DstIp || back.DstPort != k.DstPort || back.Zone != k.Zone {
			t.Fatalf("%v: direction not restored: %v (reversed %v)", k, back, rev)
		}
	}
}
