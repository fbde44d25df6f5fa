package repl

import (
	"fmt"
	"io"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/server/conntable"
)

// Limits of the data-plane API.
const (
	MaxEventsPerBatch = 10000
	MaxBlobBytes      = 1024
	maxErrorMessages  = 16 // refusals with a message per answer (every refusal is listed)
	activationChunk   = 1000
	// leaseReadEvery is how many events of a batch are decided on one read
	// of the lease: a read takes the lease's and the state machine's locks,
	// and 256 events are a fraction of a millisecond's work.
	leaseReadEvery = 256
)

// Publish serves one DataPlaneService.Publish stream: it applies each
// batch, answers it, and reports how far replication has got.
//
// Confirmations are a watermark over the stream's batches. If, while batches
// of the stream are unconfirmed, a backup refuses records because it knows
// this member was deposed (a newer epoch of the bucket with another
// primary), or a stream to a backup closes with records outstanding, the
// watermark would count records no backup holds; the stream is then ended
// with Aborted instead, and the firewall sends its unconfirmed events again,
// to the primaries of the moment.
func (r *Replicator) Publish(st pb.DataPlaneService_PublishServer) error {
	type waiting struct{ seq, mark, poisoned uint64 }
	var queue []waiting // batches not yet replicated to every site
	var through, siteThrough uint64
	for {
		req, err := st.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		poisoned := r.poisoned.Load() // before the batch's records can be sent and refused
		resp := r.publishBatch(req)
		queue = append(queue, waiting{req.Seq, r.marks.Load(), poisoned})
		local, all := r.watermark(false), r.watermark(true)
		if len(queue) > 0 && queue[0].poisoned != r.poisoned.Load() { // read after the watermarks (see sender.onAck)
			return status.Errorf(codes.Aborted, "events up to seq %d may not all be replicated (a backup refused records, "+
				"or a replication stream closed, while they were unconfirmed): send the unconfirmed events again", req.Seq)
		}
		for len(queue) > 0 && queue[0].mark <= all {
			siteThrough = queue[0].seq
			queue = queue[1:]
		}
		through = max(through, siteThrough)
		for _, q := range queue { // marks grow along the queue
			if q.mark > local {
				break
			}
			through = max(through, q.seq)
		}
		resp.ReplicatedThrough, resp.SiteReplicatedThrough = through, siteThrough
		if err := st.Send(resp); err != nil {
			return err
		}
	}
}

// refuse lists event i as refused. Every refusal is listed, so the firewall
// knows each event to send again; only the first few carry a message.
// (Listing only the first 16 lost the rest: a firewall resending what the
// answer named dropped the others, and a whole batch refused while its
// primary's lease lapsed on a loaded machine lost thousands of connections
// in connsync-bench persistence.)
func refuse(resp *pb.PublishResponse, i int, code codes.Code, format string, args ...any) {
	resp.Refused++
	e := &pb.EventError{Index: uint32(i), Code: int32(code)}
	if len(resp.Errors) < maxErrorMessages {
		e.Message = fmt.Sprintf(format, args...)
	}
	resp.Errors = append(resp.Errors, e)
}

// publishBatch applies one batch of events, each on its own: a refused event
// changes nothing and does not affect the others.
func (r *Replicator) publishBatch(req *pb.PublishRequest) *pb.PublishResponse {
	resp := &pb.PublishResponse{Seq: req.Seq}
	if len(req.Events) > MaxEventsPerBatch {
		for i := range req.Events {
			refuse(resp, i, codes.InvalidArgument, "events: %d events in one batch, at most %d", len(req.Events), MaxEventsPerBatch)
		}
		r.refused.Add(uint64(resp.Refused))
		return resp
	}
	now := time.Now()
	acting := false
	var buf []byte // reused to encode each state
	for i, ev := range req.Events {
		if i%leaseReadEvery == 0 {
			acting = r.cfg.View.Acting()
		}
		var code codes.Code
		var msg string
		if code, msg, buf = r.publishOne(i, ev, acting, now, buf); code != codes.OK {
			refuse(resp, i, code, "%s", msg)
			continue
		}
		resp.Accepted++
	}
	r.refused.Add(uint64(resp.Refused))
	return resp
}

// publishOne applies one event, if this member (acting: it holds a lease,
// as read at most leaseReadEvery events before) acts as the primary of its
// bucket; buf is a scratch buffer, returned for reuse. Field names in
// errors are built only when there is an error.
//
// The decision is made on the state machine's current generation
// (primaryPlan) and the event applied only if that still holds under the
// bucket's lock, as a backup does with a record (receive): a flip applied
// in between is decided on again. So no event is taken after this member
// has applied an entry that hands its bucket over, which the new primary's
// handoff gate waits for.
func (r *Replicator) publishOne(i int, ev *pb.ConnEvent, acting bool, now time.Time, buf []byte) (codes.Code, string, []byte) {
	field := func() string { return fmt.Sprintf("events[%d]", i) }
	if ev == nil || ev.State == nil || ev.State.Key == nil {
		return codes.InvalidArgument, field() + ".state.key: is required", buf
	}
	key, reversed, err := fsm.ParseKeyDirection(ev.State.Key, "state.key")
	if err != nil {
		return codes.InvalidArgument, field() + "." + err.Error(), buf
	}
	var update func(prev conntable.Record, existed bool) (conntable.Record, bool)
	var delay time.Duration
	switch ev.Type {
	case pb.ConnEventType_CONN_EVENT_TYPE_CREATED, pb.ConnEventType_CONN_EVENT_TYPE_UPDATED:
		st := ev.State
		if len(st.Blob) > MaxBlobBytes {
			return codes.InvalidArgument, fmt.Sprintf("%s.state.blob: %d bytes, at most %d", field(), len(st.Blob), MaxBlobBytes), buf
		}
		if len(st.TcpWindows) > 2 {
			return codes.InvalidArgument, fmt.Sprintf("%s.state.tcp_windows: %d windows, at most 2 (original and reply direction)", field(), len(st.TcpWindows)), buf
		}
		k, v := st.Key, st.Version
		st.Key, st.Version = nil, 0 // stored apart: the canonical key is the table's, versions are ours
		buf, err = proto.MarshalOptions{}.MarshalAppend(buf[:0], st)
		st.Key, st.Version = k, v
		if err != nil || len(buf) > MaxStateBytes {
			return codes.InvalidArgument, fmt.Sprintf("%s.state: %d bytes encoded, at most %d", field(), len(buf), MaxStateBytes), buf
		}
		data := buf
		update = func(prev conntable.Record, existed bool) (conntable.Record, bool) {
			pending := existed && prev.Pending
			if !existed { // a new connection: its service's delay class applies
				delay = classify(r.cfg.Delays, key.Protocol(), uint16(k.SrcPort), uint16(k.DstPort))
				pending = delay != 0
			}
			return conntable.Record{State: string(data), Reversed: reversed, Pending: pending}, true
		}
	case pb.ConnEventType_CONN_EVENT_TYPE_CLOSED:
		update = func(_ conntable.Record, existed bool) (conntable.Record, bool) {
			return conntable.Record{Deleted: true}, existed // closing twice, or a connection never published: nothing to do
		}
	default:
		return codes.InvalidArgument, fmt.Sprintf("%s.type: %v is not CREATED, UPDATED or CLOSED", field(), ev.Type), buf
	}
	b := key.Bucket(r.table.Buckets())
	for {
		p, gen := r.primaryPlan(b, acting)
		if !p.primary {
			return codes.FailedPrecondition, fmt.Sprintf("%s: bucket %d of %s is not active on %s (its primary is another member, or this member holds no lease)",
				field(), b, key, r.self), buf
		}
		stale := false
		cur, prev, existed := r.table.UpdateFunc(b, key, now.UnixNano(), conntable.VersionFloor(p.epoch), func(prev conntable.Record, existed bool) (conntable.Record, bool) {
			if r.cfg.View.Generation() != gen {
				stale = true
				return prev, false
			}
			return update(prev, existed)
		})
		switch {
		case stale:
			continue // the state machine moved on: decide on what it holds now
		case ev.Type == pb.ConnEventType_CONN_EVENT_TYPE_CLOSED:
			if existed && !prev.Pending { // the backups have it: tell them it is gone
				r.mark(b, key)
			}
		default:
			if delay > 0 {
				r.delayer.add(b, key, now.Add(delay))
			}
			if !cur.Pending {
				r.mark(b, key)
			}
		}
		return codes.OK, "", buf
	}
}

// states returns a bucket's records as the firewall's ConnStates.
func (r *Replicator) states(b uint32) []*pb.ConnState { return connStates(r.table.Snapshot(b)) }

// connStates builds the ConnStates of items.
func connStates(items []conntable.Item) []*pb.ConnState {
	out := make([]*pb.ConnState, len(items))
	sts := make([]pb.ConnState, len(items)) // one allocation for the bucket
	for i, it := range items {
		// The table holds each state encoded without key and version (the
		// fields the firewall sent, checked when it was published): they
		// travel as the message's unknown fields, which protobuf encodes
		// as they are and the firewall decodes as the fields they are. No
		// decode and encode again per state on the failover path.
		st := &sts[i]
		st.Key, st.Version = it.Key.ProtoDirection(it.Reversed), it.Version
		st.ProtoReflect().SetUnknown(protoreflect.RawFields(it.State))
		out[i] = st
	}
	return out
}

// watchTick bounds how late a WatchActivations stream notices a lease that
// ended (which changes nothing in the state machine).
const watchTick = 25 * time.Millisecond

// WatchActivations serves one DataPlaneService.WatchActivations stream.
func (r *Replicator) WatchActivations(req *pb.WatchActivationsRequest, st pb.DataPlaneService_WatchActivationsServer) error {
	if req.Mirror {
		return r.watchMirrored(st)
	}
	told := map[uint32]uint64{} // active buckets the firewall knows, with their epochs
	tick := time.NewTicker(watchTick)
	defer tick.Stop()
	for {
		_, changed := r.cfg.View.Watch()
		as, _ := r.cfg.View.Assignments()
		active := r.activeBuckets(as)
		if err := sendDeactivations(st, active, told, nil); err != nil {
			return err
		}
		sending := false // full syncs yield while states are sent (syncsYield)
		err := sendActivations(st, active, told, func(b uint32, e uint64) error {
			if !sending {
				sending = true
				r.activating.Add(1)
			}
			return r.sendActivation(st, b, e)
		})
		if sending {
			r.activationSent()
		}
		if err != nil {
			return err
		}
		select {
		case <-st.Context().Done():
			return nil
		case <-changed:
		case <-tick.C:
		}
	}
}

// activeBuckets returns the buckets of as this member may act as primary
// for now, with their epochs.
func (r *Replicator) activeBuckets(as []fsm.Assignment) map[uint32]uint64 {
	active := map[uint32]uint64{}
	if r.cfg.View.Acting() {
		for i, a := range as {
			if a.Primary == r.self && !r.cfg.View.Pending(uint32(i), a.Epoch) {
				active[uint32(i)] = a.Epoch
			}
		}
	}
	return active
}

// sendDeactivations tells the firewall of the buckets in told that are not
// in active, removes them from told and calls then (if not nil) for each.
func sendDeactivations(st pb.DataPlaneService_WatchActivationsServer, active, told map[uint32]uint64, then func(b uint32)) error {
	for _, b := range sortedBuckets(told) {
		if _, ok := active[b]; !ok {
			if err := st.Send(&pb.WatchActivationsResponse{Bucket: b, Epoch: told[b], Active: false}); err != nil {
				return err
			}
			delete(told, b)
			if then != nil {
				then(b)
			}
		}
	}
	return nil
}

// sendActivations tells the firewall of the buckets in active that told
// does not have at their epoch, and records them in told: a bucket new to
// told with activate, one at a new epoch with the epoch alone.
func sendActivations(st pb.DataPlaneService_WatchActivationsServer, active, told map[uint32]uint64, activate func(b uint32, epoch uint64) error) error {
	for _, b := range sortedBuckets(active) {
		e := active[b]
		old, ok := told[b]
		switch {
		case !ok:
			if err := activate(b, e); err != nil {
				return err
			}
		case old != e:
			if err := st.Send(&pb.WatchActivationsResponse{Bucket: b, Epoch: e, Active: true}); err != nil {
				return err
			}
		}
		told[b] = e
	}
	return nil
}

// sendActivation tells the firewall that bucket b is active at epoch, with
// its states, in messages of at most activationChunk states. Each message is
// encoded here (appendActivation) and sent as a message of unknown fields,
// which protobuf writes as they are: the failover path builds no ConnState
// or ConnKey per state.
func (r *Replicator) sendActivation(st pb.DataPlaneService_WatchActivationsServer, b uint32, epoch uint64) error {
	items := r.table.Snapshot(b)
	var buf, scratch []byte
	for {
		n := min(len(items), activationChunk)
		buf, scratch = appendActivation(buf[:0], scratch, b, epoch, items[:n], n < len(items))
		msg := &pb.WatchActivationsResponse{}
		msg.ProtoReflect().SetUnknown(protoreflect.RawFields(buf))
		if err := st.Send(msg); err != nil { // encodes msg (a copy of buf) before it returns
			return err
		}
		items = items[n:]
		if len(items) == 0 {
			return nil
		}
	}
}

// appendActivation appends to dst the wire encoding of the message
// WatchActivationsResponse{Bucket: b, Epoch: epoch, Active: true, States:
// items as ConnStates, More: more}, exactly as proto.Marshal writes it;
// scratch is a buffer for one key, returned for reuse.
func appendActivation(dst, scratch []byte, b uint32, epoch uint64, items []conntable.Item, more bool) ([]byte, []byte) {
	if b != 0 {
		dst = protowire.AppendTag(dst, 1, protowire.VarintType)
		dst = protowire.AppendVarint(dst, uint64(b))
	}
	if epoch != 0 {
		dst = protowire.AppendTag(dst, 2, protowire.VarintType)
		dst = protowire.AppendVarint(dst, epoch)
	}
	dst = appendBool(dst, 3, true)
	dst, scratch = appendStates(dst, scratch, items)
	dst = appendBool(dst, 5, more)
	return dst, scratch
}

func sortedBuckets(m map[uint32]uint64) []uint32 {
	out := make([]uint32, 0, len(m))
	for b := range m {
		out = append(out, b)
	}
	slices.Sort(out)
	return out
}

// Dump returns the states this member holds for a bucket.
func (r *Replicator) Dump(req *pb.DumpRequest) (*pb.DumpResponse, error) {
	if req.Bucket >= r.table.Buckets() {
		return nil, status.Errorf(codes.InvalidArgument, "bucket: %d is out of range (the site has %d buckets)", req.Bucket, r.table.Buckets())
	}
	role := "none"
	if a := r.assign.Load().bucket(req.Bucket); a != nil {
		switch r.self {
		case a.Primary:
			role = "primary"
		case a.LocalBackup:
			role = "local_backup"
		case a.Incoming:
			role = "incoming"
		}
	}
	return &pb.DumpResponse{States: r.states(req.Bucket), Tombstones: uint32(r.table.Stats(int(req.Bucket)).Tombstones), Role: role}, nil
}

// Status reports this member's replication.
func (r *Replicator) Status() *pb.SyncStatusResponse {
	ts := r.table.Stats(-1)
	out := &pb.SyncStatusResponse{MemberId: r.self, Connections: uint64(ts.Live), Tombstones: uint64(ts.Tombstones),
		StateBytes: uint64(ts.StateBytes), Delayed: uint64(r.delayer.len()), Refused: r.refused.Load()}
	r.mu.Lock()
	targets := make([]string, 0, len(r.senders))
	for t := range r.senders {
		targets = append(targets, t)
	}
	slices.Sort(targets)
	for _, t := range targets {
		st, syncs := r.senders[t].status()
		out.Streams = append(out.Streams, st)
		out.Sending = append(out.Sending, syncs...)
	}
	r.mu.Unlock()
	w := r.waiting()
	for _, b := range sortedBuckets(w) {
		out.Waiting = append(out.Waiting, &pb.BucketEpoch{Bucket: b, Epoch: w[b]})
	}
	for _, c := range r.cfg.Delays {
		dc := &pb.DelayClass{Name: c.Name, Protocol: uint32(c.Protocol), DelayMs: c.Delay.Milliseconds()}
		if c.Delay == Never {
			dc.DelayMs = -1
		}
		for _, p := range c.Ports {
			dc.Ports = append(dc.Ports, uint32(p))
		}
		out.DelayClasses = append(out.DelayClasses, dc)
	}
	return out
}
