package membership

import "fmt"

// State is what the local pool believes about a member.
type State int

const (
	// StateAlive: the member answers probes, or is suspected but not yet
	// declared dead (see StateSuspect).
	StateAlive State = iota
	// StateSuspect is reserved and never reported by this version:
	// memberlist v0.6.0 does not tell applications when it suspects a member
	// (hashicorp/memberlist#293), so suspected members are reported as
	// StateAlive. Consumers should treat StateSuspect like StateAlive.
	StateSuspect
	// StateDead: the pool declared the member failed. This is a proposal for
	// the site's leader to confirm, not a fact.
	StateDead
	// StateLeft: the member left gracefully (Pool.Leave).
	StateLeft
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Node is one member as the local pool sees it.
type Node struct {
	// ID is the member ID (memberlist node name).
	ID string
	// Addr is the member's advertised gossip address ("host:port").
	Addr string
	// Meta is the member's metadata; empty if it could not be decoded
	// (logged when that happens).
	Meta  Meta
	State State
}

// EventKind says what changed.
type EventKind int

const (
	// EventJoined: a member became alive, for the first time or after it had
	// failed or left. The local member gets one for itself during New.
	EventJoined EventKind = iota
	// EventUpdated: an alive member changed its Meta.
	EventUpdated
	// EventFailed: the pool declared a member dead (it stopped answering
	// probes, directly and through other members). It may be followed by
	// EventLeft for the same member when that member's leave notice arrives
	// after its death was declared.
	EventFailed
	// EventLeft: a member left gracefully.
	EventLeft
)

func (k EventKind) String() string {
	switch k {
	case EventJoined:
		return "joined"
	case EventUpdated:
		return "updated"
	case EventFailed:
		return "failed"
	case EventLeft:
		return "left"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is one change of a member, with the member's state after it.
type Event struct {
	Kind EventKind
	Node Node
}

func (e Event) String() string {
	return fmt.Sprintf("%s %s (%s, incarnation %d)", e.Kind, e.Node.ID, e.Node.Addr, e.Node.Meta.Incarnation)
}
