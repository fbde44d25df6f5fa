package main

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/internal/proccluster"
)

// publishBatch is how many events one Publish request carries.
const publishBatch = 1000

// publisher is the firewall's side of the data plane for the scenarios that
// need connection states at the members: it sends each state to its
// bucket's primary (from the bucket map read when it was made) over one
// DataPlaneService.Publish stream per member.
type publisher struct {
	c       *proccluster.Cluster
	buckets uint32
	primary []string // bucket -> member ID
	backup  []string // bucket -> its local backup's member ID ("" for none)
	streams map[string]*pubStream
}

type pubStream struct {
	conn *grpc.ClientConn
	st   pb.DataPlaneService_PublishClient
	seq  uint64
}

// newPublisher reads the settled site's bucket map and opens a Publish
// stream to every running member. close ends them.
func newPublisher(ctx context.Context, c *proccluster.Cluster) (*publisher, error) {
	p := &publisher{c: c, streams: map[string]*pubStream{}}
	if err := p.readMap(ctx); err != nil {
		return nil, err
	}
	for i, m := range c.Members() {
		if !c.Running(i) { // a member killed on purpose is primary of nothing once the map is read again
			continue
		}
		conn, err := grpc.NewClient(m.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			p.close()
			return nil, err
		}
		st, err := pb.NewDataPlaneServiceClient(conn).Publish(ctx)
		if err != nil {
			conn.Close()
			p.close()
			return nil, fmt.Errorf("publish stream to %s: %w", m.ID, err)
		}
		p.streams[m.ID] = &pubStream{conn: conn, st: st}
	}
	return p, nil
}

// readMap reads which members are each bucket's primary and local backup.
func (p *publisher) readMap(ctx context.Context) error {
	cl, err := p.c.Client(10 * time.Second)
	if err != nil {
		return err
	}
	defer cl.Close()
	r, err := cl.Assignments(ctx, pb.ReadConsistency_READ_CONSISTENCY_LINEARIZABLE)
	if err != nil {
		return err
	}
	n := len(r.Assignments)
	p.buckets, p.primary, p.backup = uint32(n), make([]string, n), make([]string, n)
	for _, a := range r.Assignments {
		p.primary[a.Bucket], p.backup[a.Bucket] = a.Primary, a.LocalBackup
	}
	return nil
}

func (p *publisher) close() {
	for _, s := range p.streams {
		s.st.CloseSend()
		s.conn.Close()
	}
}

// maxBenchConns is how many distinct connections benchConn makes.
const maxBenchConns = 1 << 24

// checkConns checks a scenario's -conns flag.
func checkConns(n int) error {
	if n < 1 || n > maxBenchConns {
		return fmt.Errorf("-conns must be between 1 and %d (got %d)", maxBenchConns, n)
	}
	return nil
}

// benchConn returns connection i's state: a UDP flow 10.x.y.z:1024 ->
// 198.51.100.9:53 (x.y.z from i; the source port grows past i = 2^24) with a
// blob of blobBytes bytes.
func benchConn(i int, blobBytes int) *pb.ConnState {
	src := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	blob := make([]byte, blobBytes)
	for j := range blob {
		blob[j] = byte(i + j)
	}
	return &pb.ConnState{Key: &pb.ConnKey{Protocol: 17, SrcIp: src.String(), SrcPort: uint32(1024 + (i>>24)%60000),
		DstIp: "198.51.100.9", DstPort: 53}, Blob: blob}
}

// bucketOf returns the bucket of st's connection.
func (p *publisher) bucketOf(st *pb.ConnState) (uint32, error) {
	k, err := fsm.ParseKey(st.Key, "key")
	if err != nil {
		return 0, err
	}
	return k.Bucket(p.buckets), nil
}

// publishRetries is how many times publish resends refused events.
const publishRetries = 20

// publish sends states (as CREATED events) to their primaries, the members'
// streams side by side, and returns once every one was accepted. Refused
// events are sent again, as a firewall would, after the bucket map is read
// again (a primary may stop acting for a moment, or a bucket move); refused
// counts them.
func (p *publisher) publish(ctx context.Context, states []*pb.ConnState) (refused int, err error) {
	evs := make([]*pb.ConnEvent, len(states))
	for i, st := range states {
		evs[i] = &pb.ConnEvent{Type: pb.ConnEventType_CONN_EVENT_TYPE_CREATED, State: st}
	}
	return p.publishEvents(ctx, evs)
}

// publishEvents is publish for events of any type; the events of one
// connection stay in their order.
func (p *publisher) publishEvents(ctx context.Context, evs []*pb.ConnEvent) (refused int, err error) {
	for attempt := 0; ; attempt++ {
		again, firstErr, err := p.publishOnce(ctx, evs)
		if err != nil || len(again) == 0 {
			return refused, err
		}
		refused += len(again)
		if attempt == publishRetries {
			return refused, fmt.Errorf("%d events still refused after %d resends (first: %s)", len(again), publishRetries, firstErr)
		}
		select {
		case <-ctx.Done():
			return refused, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if err := p.readMap(ctx); err != nil {
			return refused, err
		}
		evs = again
	}
}

// publishOnce sends events once and returns those refused, with the first
// refusal's message.
func (p *publisher) publishOnce(ctx context.Context, evs []*pb.ConnEvent) (refused []*pb.ConnEvent, first string, err error) {
	byMember := map[string][]*pb.ConnEvent{}
	for _, ev := range evs {
		b, err := p.bucketOf(ev.State)
		if err != nil {
			return nil, "", err
		}
		byMember[p.primary[b]] = append(byMember[p.primary[b]], ev)
	}
	for id, list := range byMember {
		if _, ok := p.streams[id]; !ok { // its primary is not running: refused, sent again after the map is read
			refused = append(refused, list...)
			if first == "" {
				first = fmt.Sprintf("primary %s is not running", id)
			}
		}
	}
	var mu sync.Mutex
	err = eachStream(ctx, p.streams, func(ctx context.Context, id string, s *pubStream) error {
		for list := byMember[id]; len(list) > 0; {
			n := min(len(list), publishBatch)
			resp, err := s.exchange(&pb.PublishRequest{Events: list[:n]})
			if err != nil {
				return fmt.Errorf("publish to %s: %w", id, err)
			}
			if resp.Refused > 0 {
				if int(resp.Refused) != len(resp.Errors) {
					return fmt.Errorf("publish to %s: %d events refused but %d named: cannot tell which to send again", id, resp.Refused, len(resp.Errors))
				}
				mu.Lock()
				for _, e := range resp.Errors {
					refused = append(refused, list[e.Index])
					if first == "" {
						first = e.Message
					}
				}
				mu.Unlock()
			}
			list = list[n:]
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		return nil
	})
	return refused, first, err
}

// eachStream runs fn for every stream side by side and returns the first
// error; the first error cancels the others' ctx.
func eachStream(ctx context.Context, streams map[string]*pubStream, fn func(ctx context.Context, id string, s *pubStream) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(streams))
	for id, s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx, id, s); err != nil {
				errs <- err
				cancel()
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs // nil if none
}

// exchange sends req with the stream's next seq and returns its answer.
func (s *pubStream) exchange(req *pb.PublishRequest) (*pb.PublishResponse, error) {
	s.seq++
	req.Seq = s.seq
	if err := s.st.Send(req); err != nil {
		return nil, err
	}
	return s.st.Recv()
}

// waitReplicated asks every stream (with empty batches, every poll) until
// each says every batch it was sent is replicated to the buckets' backups.
func (p *publisher) waitReplicated(ctx context.Context, poll time.Duration) error {
	return eachStream(ctx, p.streams, func(ctx context.Context, id string, s *pubStream) error {
		sent := s.seq
		for {
			resp, err := s.exchange(&pb.PublishRequest{})
			if err != nil {
				return fmt.Errorf("publish to %s: %w", id, err)
			}
			if resp.ReplicatedThrough >= sent {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(poll):
			}
		}
	})
}
