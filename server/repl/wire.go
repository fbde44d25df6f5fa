package repl

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/server/conntable"
)

// MaxStateBytes is the largest encoded connection state accepted (a ConnState
// with its 1 KiB blob and every other field fits well within it).
const MaxStateBytes = 2048

// A batch's records are framed so that one bad record can be skipped
// without losing its neighbours:
//
//	record := len(uvarint) body
//	body   := flags(1) bucket(uvarint) epoch(uvarint) [version(uvarint) keyLen(uvarint) key stateLen(uvarint) state]
//
// flags: flagDeleted, flagReversed, flagMarker. A marker ("bucket b is
// fully synced to you as of epoch e") has no version, key or state.
const (
	flagDeleted  = 1 << 0
	flagReversed = 1 << 1
	flagMarker   = 1 << 2
	knownFlags   = flagDeleted | flagReversed | flagMarker
)

// wireRecord is one decoded record.
type wireRecord struct {
	bucket uint32
	epoch  uint64
	marker bool
	key    fsm.Key
	rec    conntable.Record
}

// appendRecord appends r's framed encoding to dst.
func appendRecord(dst []byte, r *wireRecord) []byte {
	var flags byte
	switch {
	case r.marker:
		flags = flagMarker
	case r.rec.Deleted:
		flags = flagDeleted
	}
	if r.rec.Reversed {
		flags |= flagReversed
	}
	n := 1 + uvarintLen(uint64(r.bucket)) + uvarintLen(r.epoch)
	if !r.marker {
		n += uvarintLen(r.rec.Version) + uvarintLen(uint64(len(r.key))) + len(r.key) +
			uvarintLen(uint64(len(r.rec.State))) + len(r.rec.State)
	}
	dst = binary.AppendUvarint(dst, uint64(n))
	dst = append(dst, flags)
	dst = binary.AppendUvarint(dst, uint64(r.bucket))
	dst = binary.AppendUvarint(dst, r.epoch)
	if r.marker {
		return dst
	}
	dst = binary.AppendUvarint(dst, r.rec.Version)
	dst = binary.AppendUvarint(dst, uint64(len(r.key)))
	dst = append(dst, r.key...)
	dst = binary.AppendUvarint(dst, uint64(len(r.rec.State)))
	return append(dst, r.rec.State...)
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// errFraming means the rest of a batch cannot be read: a record's length is
// missing or runs past the end.
var errFraming = errors.New("repl: batch framing broken")

// decodeRecords calls fn for each well-formed record of b, in order, and
// returns how many records were malformed (and skipped). A record whose
// frame is intact but whose body is bad is skipped on its own; a broken
// frame ends the batch with errFraming. Nothing of b is retained: keys and
// states are copied.
func decodeRecords(b []byte, fn func(*wireRecord)) (bad int, err error) {
	var r wireRecord
	for len(b) > 0 {
		n, used := binary.Uvarint(b)
		if used <= 0 || n > uint64(len(b)-used) {
			return bad + 1, errFraming
		}
		body := b[used : used+int(n)]
		b = b[used+int(n):]
		if decodeBody(body, &r) != nil {
			bad++
			continue
		}
		fn(&r)
	}
	return bad, nil
}

// decodeBody decodes one record body into r.
func decodeBody(b []byte, r *wireRecord) error {
	*r = wireRecord{}
	if len(b) < 1 {
		return errors.New("empty record")
	}
	flags := b[0]
	b = b[1:]
	if flags&^knownFlags != 0 || (flags&flagMarker != 0 && flags&flagDeleted != 0) {
		return fmt.Errorf("flags %#x", flags)
	}
	var bucket uint64
	var ok bool
	if bucket, b, ok = uvarint(b); !ok || bucket > fsm.MaxBucketCount {
		return errors.New("bucket")
	}
	r.bucket = uint32(bucket)
	if r.epoch, b, ok = uvarint(b); !ok {
		return errors.New("epoch")
	}
	if flags&flagMarker != 0 {
		r.marker = true
		if len(b) != 0 {
			return errors.New("trailing bytes after a marker")
		}
		return nil
	}
	if r.rec.Version, b, ok = uvarint(b); !ok || r.rec.Version == 0 || r.rec.Version > conntable.MaxVersion {
		return errors.New("version")
	}
	var klen, slen uint64
	if klen, b, ok = uvarint(b); !ok || klen > uint64(len(b)) {
		return errors.New("key length")
	}
	k, err := fsm.KeyFromBytes(b[:klen])
	if err != nil {
		return err
	}
	b = b[klen:]
	if slen, b, ok = uvarint(b); !ok || slen != uint64(len(b)) || slen > MaxStateBytes {
		return errors.New("state length")
	}
	r.key = k // KeyFromBytes copied it: b belongs to the batch
	r.rec.Deleted = flags&flagDeleted != 0
	r.rec.Reversed = flags&flagReversed != 0
	if r.rec.Deleted && slen != 0 {
		return errors.New("a delete with a state")
	}
	r.rec.State = string(b)
	return nil
}

func uvarint(b []byte) (uint64, []byte, bool) {
	v, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, b, false
	}
	return v, b[n:], true
}
