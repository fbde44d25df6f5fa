package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	ipb "github.com/connsync/connsync/api/connsync/raftlog/v1"
	"github.com/connsync/connsync/fsm"
)

// proposer implements group commit. Requests queue on in; one goroutine takes
// whatever has queued, up to maxOps operations (batch operations count once
// per key), and appends it to Raft as one entry. At most maxInflight entries are in flight; while they are, new
// requests gather into the next entry, so batches grow with load and an idle
// site still answers a lone request at once.
type proposer struct {
	raft        *raft.Raft
	timeout     time.Duration
	maxOps      int
	inflight    chan struct{}
	in          chan *pending
	stop        chan struct{}
	wg          sync.WaitGroup
	logger      hclog.Logger
	lastPropose func(time.Time)
}

type pending struct {
	p    *ipb.Proposal
	done chan outcome // buffered(1)
}

type outcome struct {
	res fsm.ProposalResult
	err error
}

func newProposer(r *raft.Raft, cfg *Config, logger hclog.Logger, lastPropose func(time.Time)) *proposer {
	pr := &proposer{
		raft:        r,
		timeout:     cfg.ApplyTimeout,
		maxOps:      cfg.MaxBatchOps,
		inflight:    make(chan struct{}, cfg.MaxInflightEntries),
		in:          make(chan *pending, 8192),
		stop:        make(chan struct{}),
		logger:      logger,
		lastPropose: lastPropose,
	}
	pr.wg.Add(1)
	go pr.run()
	return pr
}

// propose submits one proposal and waits for its outcome. An error other than
// a domain error means the outcome is unknown unless it is raft.ErrNotLeader
// (nothing was appended).
func (pr *proposer) propose(ctx context.Context, p *ipb.Proposal) (fsm.ProposalResult, error) {
	pd := &pending{p: p, done: make(chan outcome, 1)}
	select {
	case pr.in <- pd:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-pr.stop:
		return nil, ErrShutdown
	}
	select {
	case o := <-pd.done:
		return o.res, o.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-pr.stop:
		return nil, ErrShutdown
	}
}

func (pr *proposer) close() {
	close(pr.stop)
	pr.wg.Wait()
}

func (pr *proposer) run() {
	defer pr.wg.Done()
	for {
		var first *pending
		select {
		case first = <-pr.in:
		case <-pr.stop:
			return
		}
		select {
		case pr.inflight <- struct{}{}:
		case <-pr.stop:
			first.done <- outcome{err: ErrShutdown}
			return
		}
		batch := []*pending{first}
		ops := fsm.ResultCount(first.p)
	drain:
		for ops < pr.maxOps {
			select {
			case pd := <-pr.in:
				batch = append(batch, pd)
				ops += fsm.ResultCount(pd.p)
			default:
				break drain
			}
		}
		pr.submit(batch)
	}
}

// submit appends one entry and hands the results back from a goroutine of
// its own, so the next entry can be gathered meanwhile.
func (pr *proposer) submit(batch []*pending) {
	now := time.Now()
	e := &ipb.Entry{TimeUnixNano: now.UnixNano(), Proposals: make([]*ipb.Proposal, len(batch))}
	for i, pd := range batch {
		e.Proposals[i] = pd.p
	}
	data, err := proto.Marshal(e)
	if err != nil {
		pr.finish(batch, nil, fmt.Errorf("server: encode entry: %w", err))
		return
	}
	f := pr.raft.Apply(data, pr.timeout)
	pr.lastPropose(now)
	pr.wg.Add(1)
	go func() {
		defer pr.wg.Done()
		if err := awaitFuture(f, pr.stop); err != nil {
			pr.finish(batch, nil, err)
			return
		}
		res, ok := f.Response().([]fsm.ProposalResult)
		if !ok || len(res) != len(batch) {
			pr.finish(batch, nil, fmt.Errorf("server: FSM returned %T for %d proposals", f.Response(), len(batch)))
			return
		}
		pr.finish(batch, res, nil)
	}()
}

func (pr *proposer) finish(batch []*pending, res []fsm.ProposalResult, err error) {
	<-pr.inflight
	for i, pd := range batch {
		if err != nil {
			pd.done <- outcome{err: err}
		} else {
			pd.done <- outcome{res: res[i]}
		}
	}
}

// awaitFuture waits for f's outcome, or until stop is closed (ErrShutdown).
// Raft answers every future it has taken, but not one still in its buffered
// apply queue when it shuts down (BatchApplyCh): waiting on f alone could
// then last for ever, and a member shutting down waits for its loops (a new
// leader's barrier hung a test's cleanup for 14 minutes).
func awaitFuture(f raft.Future, stop <-chan struct{}) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-stop:
		return ErrShutdown
	}
}
