package membership

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

func TestMeta_RoundTrip(t *testing.T) {
	for _, m := range []Meta{
		{},
		{Site: "s1", GRPCAddr: "10.0.0.1:7420", RaftAddr: "10.0.0.1:7421", Weight: 3, Incarnation: 0xdeadbeefcafef00d},
		{Site: strings.Repeat("é", 100), GRPCAddr: "[2001:db8::1]:7420", Weight: 1<<32 - 1, Incarnation: 1},
	} {
		b, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeMeta(b)
		if err != nil {
			t.Fatalf("decode %+v: %v", m, err)
		}
		if got != m {
			t.Fatalf("round trip: got %+v, want %+v", got, m)
		}
		// Fields appended by a later compatible version are ignored.
		got, err = DecodeMeta(append(b, 1, 2, 3))
		if err != nil || got != m {
			t.Fatalf("with trailing bytes: %+v, %v", got, err)
		}
	}
}

func TestMeta_Compact(t *testing.T) {
	m := Meta{Site: "site1", GRPCAddr: "192.168.100.100:7420", RaftAddr: "192.168.100.100:7421", Weight: 100, Incarnation: 1 << 63}
	b, _ := m.Encode()
	if len(b) > 64 {
		t.Fatalf("typical meta encodes to %d bytes", len(b))
	}
}

func TestMeta_TooLarge(t *testing.T) {
	m := Meta{Site: strings.Repeat("x", MaxMetaSize)}
	if _, err := m.Encode(); !errors.Is(err, ErrInvalidMeta) {
		t.Fatalf("Encode: %v, want ErrInvalidMeta", err)
	}
}

func TestDecodeMeta_Garbage(t *testing.T) {
	good, _ := Meta{Site: "s1", GRPCAddr: "a:1", RaftAddr: "b:2", Weight: 7, Incarnation: 9}.Encode()
	cases := map[string][]byte{
		"nil":             nil,
		"empty":           {},
		"unknown version": {2, 0, 0, 0, 0},
		"json":            []byte(`{"site":"s1"}`),
		"long string":     {1, 200, 'a'},
		"bad varint":      {1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		"weight overflow": {1, 0, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x10},
	}
	for i := range len(good) {
		cases["truncated to "+strconv.Itoa(i)] = good[:i]
	}
	for name, b := range cases {
		if m, err := DecodeMeta(b); !errors.Is(err, ErrInvalidMeta) {
			t.Errorf("%s: DecodeMeta(%x) = %+v, %v; want ErrInvalidMeta", name, b, m, err)
		}
	}
}

// FuzzDecodeMeta: any bytes decode to a Meta or an error, never a panic, and
// a decoded Meta survives a round trip.
func FuzzDecodeMeta(f *testing.F) {
	for _, m := range []Meta{{}, {Site: "s1", GRPCAddr: "10.0.0.1:7420", RaftAddr: "10.0.0.1:7421", Weight: 3, Incarnation: 42}} {
		b, _ := m.Encode()
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{1, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidMeta) {
				t.Fatalf("error %v does not wrap ErrInvalidMeta", err)
			}
			return
		}
		enc, err := m.Encode()
		if err != nil {
			return // decodable but larger than the limit: fine
		}
		if again, err := DecodeMeta(enc); err != nil || again != m {
			t.Fatalf("round trip of %+v: %+v, %v", m, again, err)
		}
	})
}
