package repl

import (
	"context"
	"math"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/metadata"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/server/conntable"
)

// Metadata keys of a Replicate stream's opening request.
const (
	mdMember      = "connsync-member"
	mdIncarnation = "connsync-incarnation"
	mdSite        = "connsync-site"
	// mdRemoteEpochs marks a stream to the other site whose records carry
	// the receiving site's epochs (epochOf); a receiver compares them with
	// its own only on such a stream (an older sender's carry its own
	// site's).
	mdRemoteEpochs = "connsync-remote-epochs"
)

// A stream to the other site crosses a WAN link (tens of ms each way): it
// sends batches this many times larger, and keeps this many times more of
// them unacknowledged, so the link's round trip does not bound throughput.
const remoteScale = 4

type qkey struct {
	bucket uint32
	key    fsm.Key
}

type qitem struct {
	qkey
	mark uint64 // the global mark sequence when it was queued
}

// fullSync is one bucket being copied to the stream's target.
type fullSync struct {
	bucket    uint32
	epoch     uint64 // the other site's epoch of the bucket when remote
	remote    bool
	items     []conntable.Item // the snapshot, taken when the sync starts sending
	next      int
	markerSeq uint64 // seq of the batch that carried the marker; 0 until sent
	bytes     uint64
	started   time.Time
}

// flight is a batch sent and not yet acknowledged.
type flight struct {
	seq     uint64
	minMark uint64 // lowest mark of its queued connections; 0 if none
	keys    []qkey // to queue again if the stream breaks
}

// sender is the stream from this member to one backup member. Connections
// are queued at most once each (queued); a connection's state is read from
// the table when it is sent, so changes made meanwhile coalesce.
type sender struct {
	r      *Replicator
	target string
	remote bool // target is on the other site

	maxRecords, maxBytes, window int

	mu        sync.Mutex
	queue     []qitem
	head      int
	queued    map[qkey]struct{}
	syncs     []*fullSync
	inflight  []flight
	nextSeq   uint64
	connected bool
	sent      uint64 // records sent
	acked     uint64 // batches acknowledged
	refused   uint64 // records refused, as the receiver last counted them
	// streamStale is the receiver's count of records refused as from a
	// deposed primary on the current stream (from 0 on each new stream).
	streamStale uint64
	closed      bool

	wake chan struct{}
	stop chan struct{}
	buf  []byte
}

func (r *Replicator) newSender(target string, remote bool) *sender {
	s := &sender{r: r, target: target, remote: remote, queued: map[qkey]struct{}{}, wake: make(chan struct{}, 1), stop: make(chan struct{}),
		maxRecords: r.cfg.MaxBatchRecords, maxBytes: r.cfg.MaxBatchBytes, window: r.cfg.Window}
	if remote {
		s.maxRecords, s.maxBytes, s.window = remoteScale*s.maxRecords, remoteScale*s.maxBytes, remoteScale*s.window
	}
	r.wg.Add(1)
	go s.run()
	return s
}

// epochOf is the epoch s's records of a bucket planned p carry: this
// site's epoch on a local stream, the other site's (as this member read it
// from that site's table) on a stream to a remote backup, which compares it
// with its own (holdsRemote) — 0 if that member is no longer the bucket's
// remote backup there (a record queued before the bucket moved), so that
// it is taken only by a member whose own table names it.
func (s *sender) epochOf(p plan) uint64 {
	switch {
	case !s.remote:
		return p.epoch
	case p.remote != s.target:
		return 0
	}
	return p.remoteEpoch
}

func (s *sender) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *sender) close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.stop)
	}
	s.mu.Unlock()
}

// enqueue queues a connection unless it is queued already (its latest state
// will be read when it is sent).
func (s *sender) enqueue(b uint32, key fsm.Key, mark uint64) {
	k := qkey{b, key}
	s.mu.Lock()
	if _, ok := s.queued[k]; !ok {
		s.queued[k] = struct{}{}
		s.queue = append(s.queue, qitem{k, mark})
	}
	s.mu.Unlock()
	s.signal()
}

func (s *sender) addSync(b uint32, epoch uint64, remote bool) {
	s.mu.Lock()
	s.syncs = append(s.syncs, &fullSync{bucket: b, epoch: epoch, remote: remote})
	s.mu.Unlock()
	s.signal()
}

// syncing returns the buckets of the full syncs under way.
func (s *sender) syncing() []uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]uint32, len(s.syncs))
	for i, f := range s.syncs {
		out[i] = f.bucket
	}
	return out
}

// outstanding returns the buckets of the records queued or in flight.
func (s *sender) outstanding() map[uint32]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[uint32]bool{}
	for _, it := range s.queue[s.head:] {
		out[it.bucket] = true
	}
	for _, f := range s.inflight {
		for _, k := range f.keys {
			out[k.bucket] = true
		}
	}
	return out
}

// watermark returns the mark sequence up to which everything queued on this
// stream has been acknowledged (MaxUint64 if nothing is outstanding).
func (s *sender) watermark() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := uint64(math.MaxUint64)
	if s.head < len(s.queue) {
		w = s.queue[s.head].mark - 1
	}
	for _, f := range s.inflight {
		if f.minMark > 0 {
			w = min(w, f.minMark-1)
		}
	}
	return w
}

// run keeps the stream connected and busy until close.
func (s *sender) run() {
	defer s.r.wg.Done()
	backoff := 20 * time.Millisecond
	for {
		err := s.stream()
		select {
		case <-s.stop:
			return
		case <-s.r.ctx.Done():
			return
		default:
		}
		if err != nil {
			s.r.cfg.Logger.Debug("replication stream ended", "target", s.target, "error", err)
		}
		select {
		case <-s.stop:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// stream runs one connection of the stream.
func (s *sender) stream() error {
	r := s.r
	addr, ok := r.cfg.View.Addr(s.target)
	if !ok {
		return errNoAddr
	}
	conn, err := r.cfg.Dial(addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, mdMember, r.self, mdSite, r.cfg.View.Site(),
		mdIncarnation, strconv.FormatUint(r.cfg.View.Incarnation(), 10), mdRemoteEpochs, "1")
	var opts []grpc.CallOption
	if s.remote && r.cfg.RemoteCompression {
		opts = append(opts, grpc.UseCompressor(gzip.Name))
	}
	st, err := pb.NewMemberServiceClient(conn).Replicate(ctx, opts...)
	if err != nil {
		return err
	}
	s.reset(true)
	defer s.reset(false)
	errc := make(chan error, 1)
	go func() {
		for {
			resp, err := st.Recv()
			if err != nil {
				errc <- err
				return
			}
			s.onAck(resp)
		}
	}()
	for {
		if req := s.nextBatch(); req != nil {
			if err := st.Send(req); err != nil {
				return err
			}
			continue
		}
		select {
		case <-s.stop:
			return nil
		case err := <-errc:
			return err
		case <-s.wake:
		}
	}
}

// reset starts a connection afresh: what was in flight goes back to the
// front of the queue, in the order it was sent, so the queue's marks still
// grow from its head (watermark relies on it); full syncs start over (their
// snapshot is taken anew).
func (s *sender) reset(connected bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connected = connected
	s.streamStale = 0
	var again []qitem
	for _, f := range s.inflight {
		for _, k := range f.keys {
			if _, ok := s.queued[k]; !ok {
				s.queued[k] = struct{}{}
				again = append(again, qitem{k, max(f.minMark, 1)})
			}
		}
	}
	if len(again) > 0 {
		s.queue = append(again, s.queue[s.head:]...)
		s.head = 0
	}
	s.inflight = nil
	for _, f := range s.syncs {
		f.items, f.next, f.markerSeq, f.bytes = nil, 0, 0, 0
	}
}

func (s *sender) onAck(resp *pb.ReplicateResponse) {
	s.mu.Lock()
	if resp.RefusedStale > s.streamStale {
		// Before the acknowledgement can raise the watermark: records
		// refused as from a deposed primary are acknowledged but stored
		// nowhere this member can count on. (Records refused because their
		// receiver is no longer a target are still at this primary, and
		// reach the bucket's new backups by full sync.)
		s.r.poison("records refused by " + s.target + ": this member was deposed")
	}
	s.streamStale = resp.RefusedStale
	for len(s.inflight) > 0 && s.inflight[0].seq <= resp.AckedSeq {
		s.inflight = s.inflight[1:]
		s.acked++
	}
	s.refused = resp.Refused
	kept := s.syncs[:0]
	for _, f := range s.syncs {
		if f.markerSeq == 0 || f.markerSeq > resp.AckedSeq {
			kept = append(kept, f)
		}
	}
	s.syncs = kept
	s.mu.Unlock()
	s.signal()
}

// nextBatch builds the next batch, or returns nil if the window is full or
// nothing is waiting. Queued connections go first (they carry the lag);
// while a full sync waits they get at most half of a batch.
func (s *sender) nextBatch() *pb.ReplicateRequest {
	r := s.r
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.inflight) >= s.window {
		return nil
	}
	buf := s.buf[:0]
	count := 0
	f := flight{seq: s.nextSeq + 1}
	deltaCap := s.maxRecords
	if len(s.syncs) > 0 {
		deltaCap /= 2
	}
	var w wireRecord
	for s.head < len(s.queue) && count < deltaCap && len(buf) < s.maxBytes {
		it := s.queue[s.head]
		s.queue[s.head] = qitem{}
		s.head++
		delete(s.queued, it.qkey)
		p := r.planOf(it.bucket)
		if !p.owner {
			// No longer this member's bucket to replicate: the record leaves
			// the watermark unsent.
			r.poison("records of a bucket this member lost dropped unsent")
			continue
		}
		rec, ok := r.table.Lookup(it.bucket, it.key)
		if !ok && !p.primary {
			r.poison("records of a bucket this member no longer acts for dropped unsent")
		}
		if !ok || rec.Pending {
			continue
		}
		w = wireRecord{bucket: it.bucket, epoch: s.epochOf(p), key: it.key, rec: rec}
		buf = appendRecord(buf, &w)
		f.keys = append(f.keys, it.qkey)
		if f.minMark == 0 || it.mark < f.minMark {
			f.minMark = it.mark
		}
		count++
	}
	if s.head > 1024 && s.head*2 > len(s.queue) {
		s.queue = append(s.queue[:0], s.queue[s.head:]...)
		s.head = 0
	}
	for len(s.syncs) > 0 && count < s.maxRecords && len(buf) < s.maxBytes && !r.syncsYield() {
		job := s.firstPendingSync()
		if job == nil {
			break
		}
		p := r.planOf(job.bucket)
		if !p.owner || (!job.remote && p.epoch != job.epoch) || (job.remote && (p.remote != s.target || p.remoteEpoch != job.epoch)) {
			s.dropSync(job) // the assignment moved on; replanning schedules what it needs now
			continue
		}
		if job.items == nil {
			job.items = r.table.Snapshot(job.bucket)
			job.started = time.Now()
		}
		for job.next < len(job.items) && count < s.maxRecords && len(buf) < s.maxBytes {
			it := job.items[job.next]
			job.next++
			w = wireRecord{bucket: job.bucket, epoch: s.epochOf(p), key: it.Key, rec: it.Record}
			before := len(buf)
			buf = appendRecord(buf, &w)
			job.bytes += uint64(len(buf) - before)
			count++
		}
		if job.next == len(job.items) && count < s.maxRecords {
			w = wireRecord{bucket: job.bucket, epoch: job.epoch, marker: true}
			buf = appendRecord(buf, &w)
			job.markerSeq = f.seq
			count++
		}
	}
	s.buf = buf
	if count == 0 {
		return nil
	}
	s.nextSeq++
	s.sent += uint64(count)
	s.inflight = append(s.inflight, f)
	return &pb.ReplicateRequest{Seq: f.seq, Records: append([]byte(nil), buf...), Count: uint32(count)}
}

// firstPendingSync returns the first full sync whose marker is not sent yet.
func (s *sender) firstPendingSync() *fullSync {
	for _, f := range s.syncs {
		if f.markerSeq == 0 {
			return f
		}
	}
	return nil
}

func (s *sender) dropSync(job *fullSync) {
	for i, f := range s.syncs {
		if f == job {
			s.syncs = append(s.syncs[:i], s.syncs[i+1:]...)
			return
		}
	}
}

// status describes the stream and its full syncs.
func (s *sender) status() (*pb.ReplicationStream, []*pb.FullSync) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &pb.ReplicationStream{Target: s.target, Connected: s.connected, Queued: uint64(len(s.queue) - s.head),
		SentRecords: s.sent, AckedBatches: s.acked, Refused: s.refused}
	var syncs []*pb.FullSync
	for _, f := range s.syncs {
		fs := &pb.FullSync{Bucket: f.bucket, Epoch: f.epoch, Target: s.target, ConnectionsTotal: uint64(len(f.items)),
			ConnectionsSent: uint64(f.next), BytesSent: f.bytes}
		if el := time.Since(f.started); f.next > 0 && f.items != nil {
			fs.EtaMs = int64(el) / int64(f.next) * int64(len(f.items)-f.next) / int64(time.Millisecond)
		}
		syncs = append(syncs, fs)
	}
	return st, syncs
}

// maxSyncYield bounds how long full syncs wait for activations (syncsYield).
const maxSyncYield = time.Second

// syncsYield reports whether full syncs wait: while a new primary sends
// activated buckets' states to its firewall (a failover), the two compete
// for the same CPU, and the firewall waits for the last state of the last
// bucket before it serves it. The backups' copies come right after; a full
// sync already waits that long when it starts behind other buckets. Never
// more than maxSyncYield in a row, so a firewall that reads slowly cannot
// hold the backups' copies back.
func (r *Replicator) syncsYield() bool {
	if r.activating.Load() == 0 {
		return false
	}
	r.yieldMu.Lock()
	defer r.yieldMu.Unlock()
	now := time.Now()
	if r.yieldSince.IsZero() {
		r.yieldSince = now
	}
	return now.Sub(r.yieldSince) < maxSyncYield
}

// activationSent ends one activation's delivery; when none is left, the
// senders are woken to go on with their full syncs.
func (r *Replicator) activationSent() {
	if r.activating.Add(-1) > 0 {
		return
	}
	r.yieldMu.Lock()
	r.yieldSince = time.Time{}
	r.yieldMu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.senders {
		s.signal()
	}
}
