package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/cespare/xxhash/v2"
	"google.golang.org/protobuf/encoding/protowire"

	pb "github.com/connsync/connsync/api/connsync/v1"
)

// MaxZoneLen is the longest zone (VRF) name accepted, in bytes.
const MaxZoneLen = 64

// Key is a canonical connection key, usable as a map key. Both directions of
// a flow give the same Key: the endpoint that sorts lower (address bytes, then
// port) always comes first. Its bytes are the encoding stored in the Raft log:
//
//	family(1: 4 or 6) protocol(1) zoneLen(1) zone addrA(4|16) portA(2) addrB(4|16) portB(2)
type Key string

// FieldError is invalid input, naming the offending request field.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// portsRequired lists the protocols whose ports must be non-zero.
var portsRequired = map[uint32]string{6: "TCP", 17: "UDP", 33: "DCCP", 132: "SCTP", 136: "UDP-Lite"}

// ParseKey validates a key from the API and canonicalises it. field prefixes
// the field names in errors (for example "key" or "keys[3]").
func ParseKey(k *pb.ConnKey, field string) (Key, error) {
	key, _, err := parseKey(k, field)
	return key, err
}

// ParseKeyDirection is ParseKey that also reports whether k runs the other
// way from the canonical key (its source is the canonical key's second
// endpoint), so the original direction can be restored (ProtoDirection).
func ParseKeyDirection(k *pb.ConnKey, field string) (Key, bool, error) {
	return parseKey(k, field)
}

func parseKey(k *pb.ConnKey, field string) (Key, bool, error) {
	if k == nil {
		return "", false, &FieldError{field, "is required"}
	}
	if len(k.Zone) > MaxZoneLen {
		return "", false, &FieldError{field + ".zone", fmt.Sprintf("is %d bytes, at most %d allowed", len(k.Zone), MaxZoneLen)}
	}
	if k.Protocol > 255 {
		return "", false, &FieldError{field + ".protocol", fmt.Sprintf("%d is not an IP protocol number (0-255)", k.Protocol)}
	}
	src, err := parseAddr(k.SrcIp, field+".src_ip")
	if err != nil {
		return "", false, err
	}
	dst, err := parseAddr(k.DstIp, field+".dst_ip")
	if err != nil {
		return "", false, err
	}
	if src.Is4() != dst.Is4() {
		return "", false, &FieldError{field + ".dst_ip", fmt.Sprintf("%s is not of the same address family as src_ip %s", dst, src)}
	}
	for _, p := range []struct {
		name string
		v    uint32
	}{{".src_port", k.SrcPort}, {".dst_port", k.DstPort}} {
		if p.v > 65535 {
			return "", false, &FieldError{field + p.name, fmt.Sprintf("%d is not a port (0-65535)", p.v)}
		}
		if name, ok := portsRequired[k.Protocol]; ok && p.v == 0 {
			return "", false, &FieldError{field + p.name, "must be non-zero for " + name}
		}
	}
	key, swapped := makeKey(k.Zone, uint8(k.Protocol), src, uint16(k.SrcPort), dst, uint16(k.DstPort))
	return key, swapped, nil
}

func parseAddr(s, field string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, &FieldError{field, "is required"}
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, &FieldError{field, fmt.Sprintf("%q is not an IP address", s)}
	}
	if a.Zone() != "" {
		return netip.Addr{}, &FieldError{field, fmt.Sprintf("%q: IPv6 zones are not allowed (use the key's zone field)", s)}
	}
	return a.Unmap(), nil
}

// makeKey builds the canonical key of a flow from a to b, and says whether
// it had to swap them.
func makeKey(zone string, proto uint8, a netip.Addr, ap uint16, b netip.Addr, bp uint16) (Key, bool) {
	ab, bb := a.AsSlice(), b.AsSlice()
	swapped := false
	if c := bytes.Compare(ab, bb); c > 0 || (c == 0 && ap > bp) {
		ab, bb, ap, bp = bb, ab, bp, ap
		swapped = true
	}
	fam := byte(4)
	if len(ab) == 16 {
		fam = 6
	}
	buf := make([]byte, 0, 3+len(zone)+2*(len(ab)+2))
	buf = append(buf, fam, proto, byte(len(zone)))
	buf = append(buf, zone...)
	buf = append(buf, ab...)
	buf = binary.BigEndian.AppendUint16(buf, ap)
	buf = append(buf, bb...)
	buf = binary.BigEndian.AppendUint16(buf, bp)
	return Key(buf), swapped
}

var errBadKey = errors.New("fsm: malformed key encoding")

// KeyFromBytes checks a key read from the log or a snapshot: well-formed and
// canonical.
func KeyFromBytes(b []byte) (Key, error) {
	if len(b) < 3 {
		return "", errBadKey
	}
	alen := 4
	switch b[0] {
	case 4:
	case 6:
		alen = 16
	default:
		return "", errBadKey
	}
	zlen := int(b[2])
	if zlen > MaxZoneLen || len(b) != 3+zlen+2*(alen+2) || !utf8.Valid(b[3:3+zlen]) {
		// The zone is a protobuf string, which must be UTF-8: ParseKey
		// gets only such zones, and a key with another could not be sent
		// to a firewall.
		return "", errBadKey
	}
	k := Key(b)
	a0, a1 := k.addr(0), k.addr(1)
	// ParseKey stores IPv4-mapped IPv6 addresses as IPv4 and never accepts a
	// zero port for the protocols that need one: such encodings are not
	// canonical (the first would be a second Key for the same flow).
	if a0.Is4In6() || a1.Is4In6() {
		return "", errBadKey
	}
	if _, ok := portsRequired[uint32(k.Protocol())]; ok && (k.port(0) == 0 || k.port(1) == 0) {
		return "", errBadKey
	}
	// Canonical order: the lower endpoint (address bytes, then port) first.
	// Compared in place: this runs for every key of every entry on every
	// replica, so it must not allocate.
	o0, o1 := k.off(0), k.off(1)
	if c := strings.Compare(string(k[o0:o0+alen]), string(k[o1:o1+alen])); c > 0 || c == 0 && k.port(0) > k.port(1) {
		return "", errBadKey
	}
	return k, nil
}

func (k Key) alen() int {
	if k[0] == 6 {
		return 16
	}
	return 4
}

func (k Key) off(i int) int { return 3 + int(k[2]) + i*(k.alen()+2) }

func (k Key) addr(i int) netip.Addr {
	a, _ := netip.AddrFromSlice([]byte(k[k.off(i) : k.off(i)+k.alen()]))
	return a
}

func (k Key) port(i int) uint16 {
	o := k.off(i) + k.alen()
	return uint16(k[o])<<8 | uint16(k[o+1])
}

// Zone returns the key's zone (VRF) name.
func (k Key) Zone() string { return string(k[3 : 3+int(k[2])]) }

// Protocol returns the key's IP protocol number.
func (k Key) Protocol() uint8 { return k[1] }

// Proto returns the canonical key in API form: the lower endpoint as source.
func (k Key) Proto() *pb.ConnKey {
	return &pb.ConnKey{
		Zone: k.Zone(), Protocol: uint32(k.Protocol()),
		SrcIp: k.addr(0).String(), SrcPort: uint32(k.port(0)),
		DstIp: k.addr(1).String(), DstPort: uint32(k.port(1)),
	}
}

// AppendProto appends the wire encoding of ProtoDirection(reversed) to b, as
// proto.Marshal writes it, without building the message or allocating: the
// failover path encodes every state of a bucket this way.
func (k Key) AppendProto(b []byte, reversed bool) []byte {
	src, dst := 0, 1
	if reversed {
		src, dst = 1, 0
	}
	if z := k.Zone(); z != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, z)
	}
	if p := k.Protocol(); p != 0 {
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(p))
	}
	b = k.appendEndpoint(b, 3, src)
	return k.appendEndpoint(b, 5, dst)
}

// appendEndpoint appends endpoint i's address (field num, text) and port
// (field num+1, omitted when 0).
func (k Key) appendEndpoint(b []byte, num protowire.Number, i int) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	at := len(b)
	b = append(b, 0) // the text's length: at most 45 bytes, one varint byte
	b = k.addr(i).AppendTo(b)
	b[at] = byte(len(b) - at - 1)
	if p := k.port(i); p != 0 {
		b = protowire.AppendTag(b, num+1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(p))
	}
	return b
}

// ProtoDirection is Proto, with the endpoints swapped if reversed: the key
// in the direction it was given to ParseKeyDirection.
func (k Key) ProtoDirection(reversed bool) *pb.ConnKey {
	p := k.Proto()
	if reversed {
		p.SrcIp, p.SrcPort, p.DstIp, p.DstPort = p.DstIp, p.DstPort, p.SrcIp, p.SrcPort
	}
	return p
}

// String formats the key for logs: "zone/proto a:p-b:p".
func (k Key) String() string {
	return fmt.Sprintf("%s/%d %s-%s", k.Zone(), k.Protocol(),
		netip.AddrPortFrom(k.addr(0), k.port(0)), netip.AddrPortFrom(k.addr(1), k.port(1)))
}

// Bucket returns the key's bucket for a table of n buckets (n a power of two).
func (k Key) Bucket(n uint32) uint32 {
	return uint32(xxhash.Sum64String(string(k))) & (n - 1)
}
