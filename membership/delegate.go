package membership

import "github.com/hashicorp/memberlist"

// delegate receives memberlist's callbacks. It is a separate type so that
// Pool's method set stays the public API.
//
// NotifyJoin, NotifyUpdate and NotifyLeave run with memberlist's node lock
// held, on whichever memberlist goroutine changed the node: they must not
// block and must not call back into memberlist. They take Pool.mu, copy the
// node and queue an event. The other callbacks run without memberlist's lock.
type delegate struct{ p *Pool }

var (
	_ memberlist.Delegate      = delegate{}
	_ memberlist.EventDelegate = delegate{}
)

// NodeMeta returns the local member's encoded Meta (validated to fit
// MaxMetaSize, which is the limit memberlist passes).
func (d delegate) NodeMeta(limit int) []byte {
	d.p.mu.Lock()
	defer d.p.mu.Unlock()
	if len(d.p.metaBuf) > limit { // cannot happen: memberlist would panic
		d.p.logger.Error("meta exceeds memberlist's limit; gossiping none", "len", len(d.p.metaBuf), "limit", limit)
		return nil
	}
	return append([]byte(nil), d.p.metaBuf...)
}

// NotifyMsg receives the pool's own gossip messages (leave notices).
func (d delegate) NotifyMsg(msg []byte) { d.p.handleLeave(msg) }

// GetBroadcasts hands memberlist the pool's queued leave notices to
// piggyback on its gossip.
func (d delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.p.broadcasts.GetBroadcasts(overhead, limit)
}

// LocalState and MergeRemoteState: the pool has no state of its own to push
// and pull; Meta travels with memberlist's node state.
func (d delegate) LocalState(bool) []byte        { return nil }
func (d delegate) MergeRemoteState([]byte, bool) {}

// NotifyJoin: a member became alive (new, or back from dead or left).
func (d delegate) NotifyJoin(n *memberlist.Node) { d.p.observe(n, EventJoined) }

// NotifyUpdate: an alive member changed its metadata.
func (d delegate) NotifyUpdate(n *memberlist.Node) { d.p.observe(n, EventUpdated) }

// NotifyLeave fires for a member declared dead and for one that left; see
// leave.go for how the two are told apart.
func (d delegate) NotifyLeave(n *memberlist.Node) { d.p.observe(n, EventFailed) }

// observe records a change memberlist reported and queues its event. kind is
// EventJoined, EventUpdated or EventFailed; EventFailed becomes EventLeft
// when the member announced its leave.
func (p *Pool) observe(n *memberlist.Node, kind EventKind) {
	node := Node{ID: n.Name, Addr: n.Address(), State: StateAlive}
	meta, err := DecodeMeta(n.Meta)
	if err != nil {
		p.logger.Warn("member's meta cannot be decoded; reporting it with empty meta",
			"member", n.Name, "addr", node.Addr, "error", err)
	} else {
		node.Meta = meta
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	inc, announced := p.intents[node.ID]
	switch kind {
	case EventJoined, EventUpdated:
		if announced && inc != node.Meta.Incarnation {
			delete(p.intents, node.ID) // a notice of an earlier process
		}
	case EventFailed:
		node.State = StateDead
		if announced && inc == node.Meta.Incarnation {
			kind, node.State = EventLeft, StateLeft
		}
	}
	prev, known := p.view[node.ID]
	switch wasAlive, isAlive := known && prev.State == StateAlive, node.State == StateAlive; {
	case !wasAlive && isAlive:
		p.numAlive.Add(1)
	case wasAlive && !isAlive:
		p.numAlive.Add(-1)
	}
	p.view[node.ID] = node
	p.enqueue(Event{Kind: kind, Node: node})
}
