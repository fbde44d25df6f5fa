package membership

// maxQueued is the length past which the event queue is compacted to the
// latest event of each member. A consumer that keeps up never gets there; one
// that stalls (or never reads) costs at most this many events, or two events
// per member in a very large pool, and still learns every member's latest
// state.
const maxQueued = 4096

// eventQueue is the FIFO between memberlist's callbacks, which must never
// block, and the Events channel, which blocks on the consumer. It is guarded
// by Pool.mu.
type eventQueue struct {
	events []Event
	limit  int // compact when len(events) exceeds it; 0 means maxQueued
}

// push appends e and compacts the queue if it grew past its limit; it
// reports whether it compacted.
func (q *eventQueue) push(e Event) bool {
	q.events = append(q.events, e)
	if q.limit == 0 {
		q.limit = maxQueued
	}
	if len(q.events) <= q.limit {
		return false
	}
	q.events = compact(q.events)
	q.limit = max(maxQueued, 2*len(q.events))
	return true
}

// take removes and returns every queued event.
func (q *eventQueue) take() []Event {
	evs := q.events
	q.events = nil
	return evs
}

// compact keeps the last event of each member, in the order of those last
// events.
func compact(evs []Event) []Event {
	last := make(map[string]int, len(evs))
	for i, e := range evs {
		last[e.Node.ID] = i
	}
	out := make([]Event, 0, len(last))
	for i, e := range evs {
		if last[e.Node.ID] == i {
			out = append(out, e)
		}
	}
	return out
}

// enqueue queues e for the Events channel and wakes the pump. The caller
// holds p.mu; it never blocks.
func (p *Pool) enqueue(e Event) {
	if p.closed {
		return
	}
	if p.queue.push(e) {
		p.logger.Warn("events are not being consumed: queue compacted to the latest event of each member",
			"queued", len(p.queue.events))
	}
	select {
	case p.signal <- struct{}{}:
	default:
	}
}

// pump moves queued events to the Events channel until Shutdown, then
// closes the channel. It is the channel's only sender.
func (p *Pool) pump() {
	defer close(p.done)
	defer close(p.events)
	for {
		p.mu.Lock()
		batch := p.queue.take()
		p.mu.Unlock()
		if len(batch) == 0 {
			select {
			case <-p.signal:
				continue
			case <-p.stop:
				return
			}
		}
		for _, e := range batch {
			select {
			case p.events <- e:
			case <-p.stop:
				return
			}
		}
	}
}
