package membership

import (
	"fmt"
	"testing"
)

func ev(kind EventKind, id string) Event { return Event{Kind: kind, Node: Node{ID: id}} }

func TestEventQueue_FIFO(t *testing.T) {
	var q eventQueue
	in := []Event{ev(EventJoined, "a"), ev(EventJoined, "b"), ev(EventFailed, "a")}
	for _, e := range in {
		if q.push(e) {
			t.Fatal("compacted a short queue")
		}
	}
	got := q.take()
	if fmt.Sprint(got) != fmt.Sprint(in) {
		t.Fatalf("take = %v, want %v", got, in)
	}
	if len(q.take()) != 0 {
		t.Fatal("take did not empty the queue")
	}
}

// A consumer that never reads costs bounded memory and still gets the latest
// state of every member.
func TestEventQueue_CompactsKeepingLatest(t *testing.T) {
	var q eventQueue
	compactions := 0
	for i := range 3 * maxQueued {
		kind := EventJoined
		if i%2 == 1 {
			kind = EventFailed
		}
		if q.push(ev(kind, fmt.Sprintf("m%d", i%10))) {
			compactions++
		}
		if len(q.events) > maxQueued {
			t.Fatalf("queue holds %d events", len(q.events))
		}
	}
	if compactions == 0 {
		t.Fatal("never compacted")
	}
	q.push(ev(EventLeft, "m3"))
	got := compact(q.take())
	if len(got) != 10 {
		t.Fatalf("after compaction %d events, want one per member: %v", len(got), got)
	}
	last := map[string]EventKind{}
	for _, e := range got {
		last[e.Node.ID] = e.Kind
	}
	for i := range 10 {
		id := fmt.Sprintf("m%d", i)
		want := EventJoined
		if i%2 == 1 {
			want = EventFailed
		}
		if id == "m3" {
			want = EventLeft
		}
		if last[id] != want {
			t.Errorf("%s: latest %v, want %v", id, last[id], want)
		}
	}
	if got[len(got)-1].Node.ID != "m3" {
		t.Errorf("order of latest events not kept: %v", got)
	}
}

func TestLeaveNotice_Decode(t *testing.T) {
	id, inc, err := decodeLeave(encodeLeave("m7", 99))
	if err != nil || id != "m7" || inc != 99 {
		t.Fatalf("round trip: %q %d %v", id, inc, err)
	}
	for _, b := range [][]byte{nil, {msgLeave}, {msgLeave, 0, 0, 0, 0, 0, 0, 0, 1}, {2, 0, 0, 0, 0, 0, 0, 0, 1, 'x'}} {
		if _, _, err := decodeLeave(b); err == nil {
			t.Errorf("decodeLeave(%x) accepted", b)
		}
	}
}
