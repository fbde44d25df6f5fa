package repl

import (
	"strings"
	"testing"
	"time"
)

func TestDelayClasses_ParseFormatClassify(t *testing.T) {
	cs, err := ParseDelayClasses("web=tcp:80,443=3s; dns=udp:53=never ;fast=17=immediate;default=any=250ms")
	if err != nil {
		t.Fatal(err)
	}
	if got := FormatDelayClasses(cs); got != "web=tcp:80,443=3s;dns=udp:53=never;fast=udp=immediate;default=any=250ms" {
		t.Fatalf("format: %s", got)
	}
	for _, c := range []struct {
		proto    uint8
		src, dst uint16
		want     time.Duration
		why      string
	}{
		{6, 40000, 443, 3 * time.Second, "web by destination port"},
		{6, 80, 40000, 3 * time.Second, "web by source port (reply direction)"},
		{17, 40000, 53, Never, "dns"},
		{17, 40000, 9999, 0, "other udp: fast"},
		{6, 40000, 22, 250 * time.Millisecond, "anything else: default"},
	} {
		if got := classify(cs, c.proto, c.src, c.dst); got != c.want {
			t.Errorf("%s: %v, want %v", c.why, got, c.want)
		}
	}
	if got := classify(nil, 6, 1, 2); got != 0 {
		t.Errorf("no classes: %v, want immediate", got)
	}
	back, err := ParseDelayClasses(FormatDelayClasses(DefaultDelayClasses()))
	if err != nil || FormatDelayClasses(back) != FormatDelayClasses(DefaultDelayClasses()) {
		t.Fatalf("defaults do not round-trip: %v", err)
	}
}

func TestDelayClasses_ParseErrors(t *testing.T) {
	for in, want := range map[string]string{
		"":               "no delay classes",
		"web=tcp:80":     "want name=proto[:ports]=delay",
		"=tcp=3s":        "the name is empty",
		"x=gopher=3s":    "protocol \"gopher\"",
		"x=tcp:0=3s":     "port \"0\"",
		"x=tcp:70000=3s": "port \"70000\"",
		"x=tcp=-1s":      "delay \"-1s\"",
		"x=tcp=soon":     "delay \"soon\"",
	} {
		_, err := ParseDelayClasses(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseDelayClasses(%q) = %v, want an error with %q", in, err, want)
		}
	}
}

func TestDelayer_ReleasesWhenDueNeverEarly(t *testing.T) {
	d := newDelayer(50 * time.Millisecond)
	t0 := time.Unix(1000, 0)
	k := testKey(t, 1)
	d.add(3, k, t0.Add(120*time.Millisecond))
	d.add(4, k, t0.Add(500*time.Millisecond))
	if got := d.due(t0.Add(100 * time.Millisecond)); len(got) != 0 {
		t.Fatalf("released early: %v", got)
	}
	if got := d.due(t0.Add(150 * time.Millisecond)); len(got) != 1 || got[0].bucket != 3 {
		t.Fatalf("at 150ms: %v", got)
	}
	if d.len() != 1 {
		t.Fatalf("%d held, want 1", d.len())
	}
	if got := d.due(t0.Add(time.Second)); len(got) != 1 || got[0].bucket != 4 {
		t.Fatalf("at 1s: %v", got)
	}
}
