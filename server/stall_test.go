package server

import (
	"testing"
	"time"
)

func TestStallWatch(t *testing.T) {
	w := newStallWatch(100*time.Millisecond, 250*time.Millisecond)
	t0 := w.last
	w.tick(t0.Add(10 * time.Millisecond))
	if from, ok := w.evidenceFrom(t0.Add(20 * time.Millisecond)); !ok || !from.IsZero() {
		t.Fatalf("no stall yet: from %v ok %v", from, ok)
	}
	if w.recent(t0.Add(20 * time.Millisecond)) {
		t.Fatal("no stall yet, but recent")
	}
	if _, ok := w.evidenceFrom(t0.Add(300 * time.Millisecond)); ok {
		t.Fatal("a stall in progress (no tick for 290ms) must refuse")
	}
	if !w.recent(t0.Add(300 * time.Millisecond)) {
		t.Fatal("a stall in progress must count as recent")
	}
	resumed := t0.Add(1300 * time.Millisecond) // stopped for 1.29 s
	w.tick(resumed)
	from, ok := w.evidenceFrom(resumed.Add(time.Millisecond))
	if !ok || !from.Equal(resumed) {
		t.Fatalf("after the stall, evidence must start %v, got %v (ok %v)", resumed, from, ok)
	}
	w.tick(resumed.Add(10 * time.Millisecond))
	if !w.recent(resumed.Add(249 * time.Millisecond)) {
		t.Fatal("checks within the guard after a stall must use a barrier")
	}
	for d := 50 * time.Millisecond; d <= 250*time.Millisecond; d += 50 * time.Millisecond {
		w.tick(resumed.Add(d))
	}
	if w.recent(resumed.Add(251 * time.Millisecond)) {
		t.Fatal("after the guard, VerifyLeader is sound again")
	}
}
