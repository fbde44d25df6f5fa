package fsm

import (
	"strings"
	"testing"
)

// TestClaimTable_SmallAndLargeKeys: IPv4 keys with zones of 0-1 bytes live
// in the pointer-free map, everything else in the string map; both behave
// the same and keys come back intact and sorted.
func TestClaimTable_SmallAndLargeKeys(t *testing.T) {
	keys := []Key{
		mustParse(t, "", 6, "10.0.0.1", 1, "10.0.0.2", 2),
		mustParse(t, "z", 6, "10.0.0.1", 1, "10.0.0.2", 2),
		mustParse(t, "zz", 6, "10.0.0.1", 1, "10.0.0.2", 2),
		mustParse(t, "", 17, "2001:db8::1", 53, "2001:db8::2", 5353),
		mustParse(t, strings.Repeat("v", MaxZoneLen), 1, "10.0.0.3", 0, "10.0.0.4", 0),
	}
	wantSmall := []bool{true, true, false, false, false}
	tab := newClaimTable()
	for i, k := range keys {
		if _, small := toSmall(k); small != wantSmall[i] {
			t.Errorf("key %d (%d bytes): small=%v, want %v", i, len(k), small, wantSmall[i])
		}
		if s, ok := toSmall(k); ok && s.keyOf() != k {
			t.Errorf("key %d: keyOf = %x, want %x", i, s.keyOf(), k)
		}
		tab.put(k, claimRec{epoch: uint64(i + 1), member: uint32(i)})
	}
	if tab.len() != len(keys) || len(tab.small) != 2 || len(tab.large) != 3 {
		t.Fatalf("len %d (small %d, large %d), want %d (2, 3)", tab.len(), len(tab.small), len(tab.large), len(keys))
	}
	for i, k := range keys {
		if c, ok := tab.get(k); !ok || c.epoch != uint64(i+1) || c.member != uint32(i) {
			t.Errorf("get key %d = %+v, %v", i, c, ok)
		}
	}
	sorted := tab.sortedKeys()
	for i := 1; i < len(sorted); i++ {
		if sorted[i-1] >= sorted[i] {
			t.Fatalf("sortedKeys not strictly ascending at %d", i)
		}
	}
	cl := tab.clone()
	for _, k := range keys {
		tab.del(k)
	}
	if tab.len() != 0 || cl.len() != len(keys) {
		t.Fatalf("after deleting all: len %d, clone len %d (clone must be independent)", tab.len(), cl.len())
	}
}

// FuzzClaimTableKeyOf: every canonical key that fits the small form comes
// back from it unchanged.
func FuzzClaimTableKeyOf(f *testing.F) {
	f.Add([]byte(mustParse(f, "", 6, "10.0.0.1", 1, "10.0.0.2", 2)))
	f.Add([]byte(mustParse(f, "a", 1, "10.0.0.1", 0, "10.0.0.2", 0)))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := KeyFromBytes(b)
		if err != nil {
			return
		}
		if s, ok := toSmall(k); ok && s.keyOf() != k {
			t.Fatalf("keyOf(%x) = %x", []byte(k), []byte(s.keyOf()))
		}
	})
}
