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
	remoteEpochs := len(md.Get(mdRemoteEpochs)) > 0 // the records carry this site's epochs
	var refused, stale uint64
	for {
		req, err := st.Recv()
		if err != nil {
			return nil // the sender went away; it resends what was not acknowledged
		}
		now := time.Now().UnixNano()
		as := *r.assign.Load()
		standby := remote && r.cfg.View.Standby()
		var batchRefused uint64
		bad, ferr := decodeRecords(req.Records, func(w *wireRecord) {
			if remote {
				if !standby { // this site was activated: the sender's site is deposed
					batchRefused++
					stale++
					return
				}
				if !r.holdsRemote(as, w, remoteEpochs) {
					batchRefused++
					return
				}
				if remoteEpochs {
					r.noteRecvEpoch(w)
				}
				if w.marker {
					r.noteMarker(w.bucket, w.epoch)
				} else if r.table.Apply(w.bucket, w.key, w.rec, now) && r.cfg.OnApply != nil {
					r.cfg.OnApply(w.bucket, w.key, w.rec.Version)
				}
				return
			}
			if ok, deposed := r.accepts(as, w, from); !ok {
				batchRefused++
				if deposed {
					stale++
				}
				return
			}
			r.noteRecvEpoch(w)
			if w.marker {
				r.noteMarker(w.bucket, w.epoch)
				return
			}
			if sabotage.DropDeltas.Load() {
				return
			}
			if r.table.Apply(w.bucket, w.key, w.rec, now) && r.cfg.OnApply != nil {
				r.cfg.OnApply(w.bucket, w.key, w.rec.Version)
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
func (r *Replicator) holdsRemote(as []fsm.Assignment, w *wireRecord, remoteEpochs bool) bool {
	switch {
	case w.bucket >= r.table.Buckets():
		return false
	case int(w.bucket) >= len(as):
		return remoteEpochs && w.epoch > 0 // this member's state machine has not got the table yet
	}
	a := as[w.bucket]
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
func (r *Replicator) accepts(as []fsm.Assignment, w *wireRecord, from string) (ok, deposed bool) {
	if w.bucket >= r.table.Buckets() {
		return false, false
	}
	if int(w.bucket) >= len(as) {
		return w.epoch > 0, false // this member's state machine has not got the table yet
	}
	a := as[w.bucket]
	if a.Primary == from && (a.LocalBackup == r.self || a.Incoming == r.self) {
		return true, false
	}
	if w.epoch > a.Epoch {
		return true, false
	}
	return false, a.Primary != from
}
