package repl

import (
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/server/conntable"
)

// watchMirrored serves a WatchActivations stream with mirror set: the
// firewall keeps a copy of every bucket this member is not active for, fed
// from the connection table as it changes (conntable.Feed), and an
// activation carries no states.
//
// Why: handing a bucket's states over at activation makes a failover as
// slow as the stream that carries them (about 1 µs a connection, so 400 ms
// for a member's 333k; see docs/BENCHMARKS.md). Fed ahead of time, the
// firewall holds them already, as a firewall cluster's backup holds its
// synced connections in its own tables.
//
// Order is what makes the copy right at activation: a bucket's last
// changes are taken from the feed, and it stops following the bucket, in
// one step under the bucket's lock, then those changes are sent, then the
// activation, on the one stream. Once this member is the bucket's primary
// no backup write reaches its table (a record of an older epoch is refused),
// and from then on the firewall is the source of the bucket's states.
func (r *Replicator) watchMirrored(st pb.DataPlaneService_WatchActivationsServer) error {
	feed := r.table.NewFeed()
	defer feed.Close()
	for b := range r.table.Buckets() {
		feed.Follow(b)
	}
	m := &mirrorSender{st: st, held: make([]bool, r.table.Buckets()), taken: make([]bool, r.table.Buckets())}
	told := map[uint32]uint64{}
	// lapsed: buckets told inactive, not followed yet, with the index this
	// member became their primary at (Assignment.Since; see below).
	lapsed := map[uint32]uint64{}
	tick := time.NewTicker(watchTick)
	defer tick.Stop()
	caughtUp := false
	var next uint32 // where the next pass over changed buckets starts
	for {
		_, changed := r.cfg.View.Watch()
		as, _ := r.cfg.View.Assignments()
		active := r.activeBuckets(as)
		// A bucket no longer active is followed from where it is: the
		// firewall's states stand, as its copy, and what changes in the
		// table from here on is sent (records of the other site while this
		// one is standby, say). Once this member is no longer the bucket's
		// primary since the takeover it was active after, it is followed
		// again from scratch: the firewall's copy becomes the table's. A
		// lease that lapses for a moment so costs nothing. (Replacing at
		// once sent every active bucket's states again after a lapse,
		// hundreds of thousands of them, ahead of the activations of a
		// failover on a loaded machine.)
		err := sendDeactivations(st, active, told, func(b uint32) {
			feed.FollowFrom(b)
			lapsed[b] = 0
			if int(b) < len(as) && as[b].Primary == r.self {
				lapsed[b] = as[b].Since
			}
		})
		if err != nil {
			return err
		}
		for b, since := range lapsed {
			if int(b) >= len(as) || as[b].Primary != r.self || as[b].Since != since || since == 0 {
				feed.Follow(b)
				delete(lapsed, b)
			}
		}
		activated, flushed := 0, 0 // for the debug log
		err = sendActivations(st, active, told, func(b uint32, e uint64) error {
			delete(lapsed, b)
			if c, ok := feed.Take(b, true); ok { // the bucket's last changes before it is active
				flushed += len(c.Live) + len(c.Gone)
				if err := m.send(b, c); err != nil {
					return err
				}
			}
			m.held[b] = true // the firewall processes the bucket: it holds states of it
			activated++
			return st.Send(&pb.WatchActivationsResponse{Bucket: b, Epoch: e, Active: true})
		})
		if err != nil {
			return err
		}
		if activated > 0 {
			r.cfg.Logger.Debug("mirror stream: buckets activated", "buckets", activated, "states_sent_first", flushed)
		}
		// The other changes, a bounded share per round: an activation due
		// meanwhile (a failover brings full syncs, and so changes, to this
		// member's backups) waits for one share, not for all of them.
		budget, full := mirrorShare, false
		next, err = feed.Dirty(next, func(b uint32) (bool, error) {
			c, ok := feed.Take(b, false)
			if !ok {
				return true, nil // active: not followed
			}
			budget -= len(c.Live) + len(c.Gone)
			full = budget <= 0
			return !full, m.send(b, c)
		})
		if err != nil {
			return err
		}
		if !caughtUp && m.fresh == len(m.taken) {
			if err := st.Send(&pb.WatchActivationsResponse{CaughtUp: true}); err != nil {
				return err
			}
			caughtUp = true
		}
		if full { // more to send: look at the activations first, without waiting
			if st.Context().Err() != nil {
				return nil
			}
			continue
		}
		select {
		case <-st.Context().Done():
			return nil
		case <-changed:
		case <-tick.C:
		case <-feed.Wake():
		}
	}
}

// mirrorShare is about how many states and keys a mirror stream sends
// between two looks at the activations due.
const mirrorShare = 4 * activationChunk

// mirrorSender sends a feed's changes as mirror messages.
type mirrorSender struct {
	st           pb.DataPlaneService_WatchActivationsServer
	held         []bool // bucket -> the firewall may hold some of its states
	taken        []bool // bucket -> taken from the feed at least once
	fresh        int    // buckets taken
	buf, scratch []byte
}

// send sends c, bucket b's change, in messages of at most activationChunk
// states and keys.
func (m *mirrorSender) send(b uint32, c conntable.Change) error {
	if !m.taken[b] {
		m.taken[b] = true
		m.fresh++
	}
	if c.Empty() || (c.Reset && len(c.Live) == 0 && !m.held[b]) {
		return nil
	}
	if c.Reset {
		m.held[b] = false
	}
	m.held[b] = m.held[b] || len(c.Live) > 0
	live, gone, reset := c.Live, c.Gone, c.Reset
	for first := true; first || len(live)+len(gone) > 0; first = false {
		nl := min(len(live), activationChunk)
		ng := min(len(gone), activationChunk-nl)
		more := nl+ng < len(live)+len(gone)
		m.buf, m.scratch = appendMirror(m.buf[:0], m.scratch, b, reset && first, live[:nl], gone[:ng], more)
		msg := &pb.WatchActivationsResponse{}
		msg.ProtoReflect().SetUnknown(protoreflect.RawFields(m.buf))
		if err := m.st.Send(msg); err != nil { // encodes msg (a copy of buf) before it returns
			return err
		}
		live, gone = live[nl:], gone[ng:]
	}
	return nil
}

// appendMirror appends the wire encoding of WatchActivationsResponse{Bucket:
// b, States: items, More: more, Mirror: true, Reset: reset, Closed: gone},
// exactly as proto.Marshal writes it (fields in number order).
func appendMirror(dst, scratch []byte, b uint32, reset bool, items []conntable.Item, gone []fsm.Key, more bool) ([]byte, []byte) {
	if b != 0 {
		dst = protowire.AppendTag(dst, 1, protowire.VarintType)
		dst = protowire.AppendVarint(dst, uint64(b))
	}
	dst, scratch = appendStates(dst, scratch, items)
	dst = appendBool(dst, 5, more)
	dst = appendBool(dst, 6, true)
	dst = appendBool(dst, 7, reset)
	for _, k := range gone {
		scratch = k.AppendProto(scratch[:0], false)
		dst = protowire.AppendTag(dst, 8, protowire.BytesType)
		dst = protowire.AppendBytes(dst, scratch)
	}
	return dst, scratch
}

// appendBool appends field num when v is true (proto3 omits false).
func appendBool(dst []byte, num protowire.Number, v bool) []byte {
	if !v {
		return dst
	}
	dst = protowire.AppendTag(dst, num, protowire.VarintType)
	return protowire.AppendVarint(dst, 1)
}

// appendStates appends items as field 4 (repeated ConnState) of a
// WatchActivationsResponse; scratch is a buffer for one key, returned for
// reuse.
func appendStates(dst, scratch []byte, items []conntable.Item) ([]byte, []byte) {
	for _, it := range items {
		// A ConnState: key (1), version (2), then the fields the firewall
		// sent, which the table holds encoded (see states).
		scratch = it.Key.AppendProto(scratch[:0], it.Reversed)
		n := 1 + protowire.SizeBytes(len(scratch)) + len(it.State)
		if it.Version != 0 {
			n += 1 + protowire.SizeVarint(it.Version)
		}
		dst = protowire.AppendTag(dst, 4, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(n))
		dst = protowire.AppendTag(dst, 1, protowire.BytesType)
		dst = protowire.AppendBytes(dst, scratch)
		if it.Version != 0 {
			dst = protowire.AppendTag(dst, 2, protowire.VarintType)
			dst = protowire.AppendVarint(dst, it.Version)
		}
		dst = append(dst, it.State...)
	}
	return dst, scratch
}
