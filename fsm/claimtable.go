package fsm

import (
	"maps"
	"sort"
)

// claimTable holds the claims of a site. It is built to be invisible to the
// garbage collector: a site holds up to millions of claims, and a table of
// string keys and string member IDs made every GC cycle walk all of them
// (measured: GC falling behind a steady 100k claims/s; docs/BENCHMARKS.md).
// Keys of at most 16 bytes (IPv4 with a zone of at most one byte) are stored
// as fixed-size arrays, and members as indexes into the state's member list,
// so that map holds no pointers at all. Longer keys (IPv6, long zones) use a
// second map keyed by the string.
//
// A Key's encoding is self-describing (family and zone length come first), so
// padding a short key with zeros to 16 bytes is unambiguous.
type claimTable struct {
	small map[smallKey]claimRec
	large map[Key]claimRec
}

type smallKey [16]byte

// claimRec is a claim with its member as an index into state.memberIDs.
type claimRec struct {
	epoch  uint64
	member uint32
}

func newClaimTable() claimTable {
	return claimTable{small: map[smallKey]claimRec{}, large: map[Key]claimRec{}}
}

func toSmall(k Key) (smallKey, bool) {
	var s smallKey
	if len(k) > len(s) {
		return s, false
	}
	copy(s[:], k)
	return s, true
}

// keyOf recovers the Key of a small key: its length follows from the family
// and zone length bytes.
func (s smallKey) keyOf() Key {
	alen := 4
	if s[0] == 6 {
		alen = 16
	}
	return Key(s[:3+int(s[2])+2*(alen+2)])
}

func (t *claimTable) get(k Key) (claimRec, bool) {
	if s, ok := toSmall(k); ok {
		c, ok := t.small[s]
		return c, ok
	}
	c, ok := t.large[k]
	return c, ok
}

func (t *claimTable) put(k Key, c claimRec) {
	if s, ok := toSmall(k); ok {
		t.small[s] = c
		return
	}
	t.large[k] = c
}

func (t *claimTable) del(k Key) {
	if s, ok := toSmall(k); ok {
		delete(t.small, s)
		return
	}
	delete(t.large, k)
}

func (t *claimTable) len() int { return len(t.small) + len(t.large) }

// clone copies the table. maps.Clone copies the maps' internal tables
// wholesale, several times faster than re-inserting every entry; it runs
// under the FSM lock (Snapshot), blocking Apply meanwhile.
func (t *claimTable) clone() claimTable {
	return claimTable{small: maps.Clone(t.small), large: maps.Clone(t.large)}
}

// sortedKeys returns every claimed key in Key order (for snapshots).
func (t *claimTable) sortedKeys() []Key {
	ks := make([]Key, 0, t.len())
	for s := range t.small {
		ks = append(ks, s.keyOf())
	}
	for k := range t.large {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return ks[i] < ks[j] })
	return ks
}
