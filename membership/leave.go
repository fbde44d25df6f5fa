package membership

import (
	"encoding/binary"
	"errors"

	"github.com/hashicorp/memberlist"
)

// Leave notices. memberlist v0.6.0 knows whether a member left or died, but
// does not tell its EventDelegate (the Node passed to NotifyLeave always has
// State alive, hashicorp/memberlist#293). So, like Serf, a leaving pool first
// gossips a leave notice of its own: member ID and process incarnation. A
// pool reports a member that stops as EventLeft if it holds a notice for that
// member's current incarnation, and EventFailed otherwise; a notice that
// arrives after the death was reported turns it into EventLeft. Pools
// re-gossip notices they see for the first time, so one reaches every member
// that is reachable, not only those the leaver gossiped to itself.

// msgLeave is the first byte of a leave notice (a memberlist user message).
const msgLeave = 1

func encodeLeave(id string, incarnation uint64) []byte {
	b := make([]byte, 0, 1+8+len(id))
	b = append(b, msgLeave)
	b = binary.BigEndian.AppendUint64(b, incarnation)
	return append(b, id...)
}

func decodeLeave(b []byte) (id string, incarnation uint64, err error) {
	if len(b) < 1+8+1 || b[0] != msgLeave {
		return "", 0, errors.New("not a leave notice")
	}
	return string(b[9:]), binary.BigEndian.Uint64(b[1:9]), nil
}

// leaveBroadcast is a leave notice in the pool's gossip queue. A newer
// notice for the same member replaces an older one.
type leaveBroadcast struct {
	id     string
	msg    []byte
	notify chan struct{} // closed when gossiped often enough (or replaced); may be nil
}

var _ memberlist.NamedBroadcast = (*leaveBroadcast)(nil)

func (b *leaveBroadcast) Name() string { return "leave:" + b.id }

func (b *leaveBroadcast) Invalidates(other memberlist.Broadcast) bool {
	o, ok := other.(*leaveBroadcast)
	return ok && o.id == b.id
}

func (b *leaveBroadcast) Message() []byte { return b.msg }

func (b *leaveBroadcast) Finished() {
	if b.notify != nil {
		close(b.notify)
	}
}

// handleLeave records a leave notice received from the pool. Called from
// memberlist's packet or stream goroutines, not under its node lock.
func (p *Pool) handleLeave(msg []byte) {
	id, inc, err := decodeLeave(msg)
	if err != nil {
		p.logger.Warn("ignoring gossip message", "error", err, "len", len(msg))
		return
	}
	p.mu.Lock()
	known, ok := p.intents[id]
	if ok && known == inc {
		p.mu.Unlock()
		return
	}
	p.intents[id] = inc
	if n, ok := p.view[id]; ok && n.State == StateDead && n.Meta.Incarnation == inc {
		n.State = StateLeft
		p.view[id] = n
		p.enqueue(Event{Kind: EventLeft, Node: n})
	}
	p.mu.Unlock()
	if id != p.cfg.MemberID {
		p.broadcasts.QueueBroadcast(&leaveBroadcast{id: id, msg: append([]byte(nil), msg...)})
	}
}

// leaveNotice queues this pool's own leave notice and returns a channel
// closed once it has been gossiped often enough.
func (p *Pool) leaveNotice(incarnation uint64) <-chan struct{} {
	b := &leaveBroadcast{id: p.cfg.MemberID, msg: encodeLeave(p.cfg.MemberID, incarnation), notify: make(chan struct{})}
	p.broadcasts.QueueBroadcast(b)
	return b.notify
}
