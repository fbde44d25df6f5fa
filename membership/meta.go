package membership

import (
	"encoding/binary"
	"fmt"

	"github.com/hashicorp/memberlist"
)

// Meta is what a member tells the pool about itself. It travels with every
// alive message of the member (memberlist node metadata), so it is small and
// changes rarely.
type Meta struct {
	// Site is the member's site.
	Site string
	// GRPCAddr and RaftAddr are the member's advertised gRPC and Raft
	// addresses ("host:port").
	GRPCAddr string
	RaftAddr string
	// Weight is the member's placement weight.
	Weight uint32
	// Incarnation identifies one start of the member's process: New draws a
	// random one when it is 0. A member that restarts faster than failure
	// detection shows up as an Updated event with a new Incarnation rather
	// than Failed then Joined, so consumers compare it.
	Incarnation uint64
}

// MaxMetaSize is the largest encoded Meta (memberlist's limit on node
// metadata).
const MaxMetaSize = memberlist.MetaMaxSize

// metaVersion is the first byte of an encoded Meta. It changes only if the
// format changes incompatibly; compatible additions append fields, which
// older decoders ignore.
const metaVersion = 1

// Encode returns the wire form of m: a version byte, the three strings with
// uvarint length prefixes, Weight as a uvarint and Incarnation as 8 bytes big
// endian. It fails with ErrInvalidMeta if the result exceeds MaxMetaSize.
func (m Meta) Encode() ([]byte, error) {
	b := make([]byte, 0, 1+3*binary.MaxVarintLen16+len(m.Site)+len(m.GRPCAddr)+len(m.RaftAddr)+binary.MaxVarintLen32+8)
	b = append(b, metaVersion)
	for _, s := range []string{m.Site, m.GRPCAddr, m.RaftAddr} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = binary.AppendUvarint(b, uint64(m.Weight))
	b = binary.BigEndian.AppendUint64(b, m.Incarnation)
	if len(b) > MaxMetaSize {
		return nil, fmt.Errorf("%w: encodes to %d bytes, more than the limit of %d", ErrInvalidMeta, len(b), MaxMetaSize)
	}
	return b, nil
}

// DecodeMeta parses the output of Meta.Encode. Bytes that are not a Meta
// (empty, truncated, an unknown version) give an error wrapping
// ErrInvalidMeta; it never panics. Bytes after the known fields are ignored.
func DecodeMeta(b []byte) (Meta, error) {
	d := metaDecoder{b: b}
	if v := d.byte(); d.err == nil && v != metaVersion {
		return Meta{}, fmt.Errorf("%w: unknown format version %d", ErrInvalidMeta, v)
	}
	m := Meta{Site: d.string("site"), GRPCAddr: d.string("grpc address"), RaftAddr: d.string("raft address")}
	w := d.uvarint("weight")
	if d.err == nil && w > 1<<32-1 {
		d.fail("weight %d does not fit 32 bits", w)
	}
	m.Weight = uint32(w)
	m.Incarnation = d.uint64("incarnation")
	if d.err != nil {
		return Meta{}, d.err
	}
	return m, nil
}

// metaDecoder reads fields until the first error, which it keeps.
type metaDecoder struct {
	b   []byte
	err error
}

func (d *metaDecoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrInvalidMeta, fmt.Sprintf(format, args...))
	}
}

func (d *metaDecoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.fail("empty")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *metaDecoder) uvarint(field string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("%s: bad varint", field)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *metaDecoder) string(field string) string {
	n := d.uvarint(field + " length")
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.b)) {
		d.fail("%s: length %d exceeds the %d bytes left", field, n, len(d.b))
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *metaDecoder) uint64(field string) uint64 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 8 {
		d.fail("%s: truncated", field)
		return 0
	}
	v := binary.BigEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}
