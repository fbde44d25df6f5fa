package repl

import (
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/internal/sabotage"
)

var errNoAddr = errors.New("repl: no address known for the member")

// Receive serves one Replicate stream from a bucket primary: it applies each
// batch's records that this member should take, counts the others, and
// acknowledges every batch once applied.
func (r *Replicator) Receive(st pb.MemberService_ReplicateServer) error {
	md, _ := metadata.FromIncomingContext(st.Context())
	var from string
	if v := md.Get(mdMember); len(v) > 0 {
		from = v[0]
	}
	if !fsm.ValidID(from) {
		return status.Errorf(codes.InvalidArgument, "metadata %s: %q is not a member ID", mdMember, from)
	}
	// A stream from the other site carries remote backups: taken only while
	// this site is standby, into the buckets this member is primary of.
	remote := false
	if v := md.Get(mdSite); len(v) > 0 && v[0] != "" && v[0] != r.cfg.View.Site() {
		remote = true
	}
	in := inbound{from: from, remote: remote, remoteEpochs: len(md.Get(mdRemoteEpochs)) > 0}
	var refused, stale uint64
	for {
		req, err := st.Recv()
		if err != nil {
			return nil // the sender went away; it resends what was not acknowledged
		}
		now := time.Now().UnixNano()
		at := r.assign.Load()
		var batchRefused uint64
		bad, ferr := decodeRecords(req.Records, func(w *wireRecord) {
			if ok, deposed := r.receive(at, in, w, now); !ok {
				batchRefused++
				if deposed {
					stale++
				}
			}
		})
		if bad > 0 {
			batchRefused += uint64(bad)
			r.cfg.Logger.Warn("malformed replication records skipped", "from", from, "count", bad, "error", ferr)
		}
		refused += batchRefused
		r.refused.Add(batchRefused)
		if err := st.Send(&pb.ReplicateResponse{AckedSeq: req.Seq, Refused: refused, RefusedStale: stale}); err != nil {
			return nil
		}
	}
}

// inbound is what a Replicate stream's metadata says of its records.
type inbound struct {
	from         string // the sending member
	remote       bool   // from the other site: remote backups
	remoteEpochs bool   // the records carry this site's epochs
}

// receive decides whether this member takes record w, on at (the state
// machine as replan last read it), and applies it if so; deposed reports a
// refusal because the sender no longer acts for the bucket. The state
// machine may have moved on since at: a refusal is decided again on its
// current state, and the apply is made only if the state machine's
// generation is still the one the decision was made on, checked under the
// bucket's lock (conntable.ApplyIf), else decided again. An activation reads
// the new primary's states under that lock after the state machine changed,
// so a record of the primary the change deposed, decided on before the
// change, is either in what the activation reads or not applied at all.
func (r *Replicator) receive(at *assigned, in inbound, w *wireRecord, now int64) (ok, deposed bool) {
	gen, a, standby := at.gen, at.bucket(w.bucket), at.standby
	current := func() bool { return r.cfg.View.Generation() == gen }
	for {
		ok, deposed = r.decide(a, standby, in, w)
		if !ok && current() {
			return false, deposed
		}
		if ok {
			if in.remoteEpochs || !in.remote {
				r.noteRecvEpoch(w)
			}
			switch {
			case w.marker:
				r.noteMarker(w.bucket, w.epoch)
				return true, false
			case !in.remote && sabotage.DropDeltas.Load():
				return true, false
			}
			applied, held := r.table.ApplyIf(w.bucket, w.key, w.rec, now, current)
			if held {
				if applied && r.cfg.OnApply != nil {
					r.cfg.OnApply(w.bucket, w.key, w.rec.Version)
				}
				return true, false
			}
		}
		// The state machine moved on: decide on what it holds now.
		gen = r.cfg.View.Generation()
		a = nil
		if cur, found := r.cfg.View.Assignment(w.bucket); found {
			a = &cur
		}
		standby = r.cfg.View.Standby()
	}
}

// decide reports whether this member takes record w with bucket assignment
// a (nil: the state machine has no table yet) and the site standby or not,
// and whether a refusal is because the sender no longer acts for it.
func (r *Replicator) decide(a *fsm.Assignment, standby bool, in inbound, w *wireRecord) (ok, deposed bool) {
	if !in.remote {
		return r.accepts(a, w, in.from)
	}
	if !standby { // this site was activated: the sender's site is deposed
		return false, true
	}
	return r.holdsRemote(a, w, in.remoteEpochs), false
}

// holdsRemote reports whether this member, on a standby site, holds the
// remote backup of w's bucket: it is the bucket's primary there. On a
// stream whose records carry this site's epochs (remoteEpochs: the sender
// stamps each with this site's epoch of the bucket as it read it from this
// site's table, or 0 for a member it no longer names), a newer epoch than
// this member's own means its state machine lags the member the sender
// follows, where the sender saw it named primary at that epoch: the record
// is taken (refusing it would lose it for good: the sender sends a full
// sync once per (bucket, target, epoch)). Once this site is activated
// (SetSiteModeOp) the stream is refused whole.
func (r *Replicator) holdsRemote(a *fsm.Assignment, w *wireRecord, remoteEpochs bool) bool {
	switch {
	case w.bucket >= r.table.Buckets():
		return false
	case a == nil:
		return remoteEpochs && w.epoch > 0 // this member's state machine has not got the table yet
	}
	return a.Primary == r.self || (remoteEpochs && w.epoch > a.Epoch)
}

// noteRecvEpoch records that a record of w's epoch was taken for its bucket,
// so that replanning does not drop the bucket before this member's state
// machine has caught up with that epoch.
func (r *Replicator) noteRecvEpoch(w *wireRecord) {
	e := &r.recvEpoch[w.bucket]
	for cur := e.Load(); w.epoch > cur && !e.CompareAndSwap(cur, w.epoch); cur = e.Load() {
	}
}

// accepts decides whether this member applies a record sent by member from.
// A record from the bucket's primary (as this member's state machine knows
// it) is taken if this member is a target of the bucket. A record from any
// other member is taken only if it carries a newer epoch than this member
// knows (its state machine lags the sender's); otherwise the sender is a
// deposed primary and the record is refused (fencing by epoch): deposed
// reports that case, as against a record from the primary to a member that
// is not (or no longer) its target, which the primary still holds.
func (r *Replicator) accepts(a *fsm.Assignment, w *wireRecord, from string) (ok, deposed bool) {
	if w.bucket >= r.table.Buckets() {
		return false, false
	}
	if a == nil {
		return w.epoch > 0, false // this member's state machine has not got the table yet
	}
	if a.Primary == from && (a.LocalBackup == r.self || a.Incoming == r.self) {
		return true, false
	}
	if w.epoch > a.Epoch {
		return true, false
	}
	return false, a.Primary != from
}
