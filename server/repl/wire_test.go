package repl

import (
	"bytes"
	"net/netip"
	"testing"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
	"github.com/connsync/connsync/server/conntable"
)

func testKey(t testing.TB, i int) fsm.Key {
	t.Helper()
	k, err := fsm.ParseKey(&pb.ConnKey{Protocol: 6, SrcIp: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String(),
		SrcPort: uint32(1024 + i%50000), DstIp: "192.0.2.1", DstPort: 443}, "key")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sampleRecords(t testing.TB) []wireRecord {
	v6, err := fsm.ParseKey(&pb.ConnKey{Zone: "vrf-blue", Protocol: 17, SrcIp: "2001:db8::1", SrcPort: 53, DstIp: "2001:db8::2", DstPort: 5353}, "key")
	if err != nil {
		t.Fatal(err)
	}
	return []wireRecord{
		{bucket: 7, epoch: 100, key: testKey(t, 1), rec: conntable.Record{Version: 3, State: "state-one", Reversed: true}},
		{bucket: 4095, epoch: 1 << 40, key: v6, rec: conntable.Record{Version: 1 << 50, State: string(bytes.Repeat([]byte{0xff}, MaxStateBytes))}},
		{bucket: 0, epoch: 5, key: testKey(t, 2), rec: conntable.Record{Version: 9, Deleted: true}},
		{bucket: 12, epoch: 77, marker: true},
	}
}

func TestWire_RoundTrip(t *testing.T) {
	want := sampleRecords(t)
	var buf []byte
	for i := range want {
		buf = appendRecord(buf, &want[i])
	}
	var got []wireRecord
	bad, err := decodeRecords(buf, func(r *wireRecord) { got = append(got, *r) })
	if err != nil || bad != 0 {
		t.Fatalf("decode: bad %d, err %v", bad, err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d records, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("record %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

// One bad record is skipped; its neighbours arrive.
func TestWire_BadRecordSkipped(t *testing.T) {
	recs := sampleRecords(t)
	var buf []byte
	buf = appendRecord(buf, &recs[0])
	// A well-framed record with a non-canonical key.
	bad := wireRecord{bucket: 1, epoch: 1, key: fsm.Key("\x04\x06\x00\x0a\x00\x00\x09\x00\x01\x0a\x00\x00\x01\x00\x02"), rec: conntable.Record{Version: 1, State: "x"}}
	buf = appendRecord(buf, &bad)
	// A well-framed record with an oversized state.
	big := wireRecord{bucket: 1, epoch: 1, key: testKey(t, 5), rec: conntable.Record{Version: 1, State: string(make([]byte, MaxStateBytes+1))}}
	buf = appendRecord(buf, &big)
	buf = appendRecord(buf, &recs[3])
	var got []wireRecord
	n, err := decodeRecords(buf, func(r *wireRecord) { got = append(got, *r) })
	if err != nil || n != 2 || len(got) != 2 || got[0] != recs[0] || got[1] != recs[3] {
		t.Fatalf("bad %d err %v got %+v", n, err, got)
	}
	// A broken frame ends the batch, keeping what came before it.
	trunc := appendRecord(appendRecord(nil, &recs[0]), &recs[1])
	trunc = trunc[:len(trunc)-10]
	got = nil
	n, err = decodeRecords(trunc, func(r *wireRecord) { got = append(got, *r) })
	if err != errFraming || n != 1 || len(got) != 1 {
		t.Fatalf("truncated: bad %d err %v got %d", n, err, len(got))
	}
}

func FuzzDecodeRecords(f *testing.F) {
	recs := sampleRecords(f)
	var buf []byte
	for i := range recs {
		buf = appendRecord(buf, &recs[i])
	}
	f.Add(buf)
	f.Add([]byte{0x05, 0x00, 0x01, 0x01, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		decodeRecords(b, func(r *wireRecord) {
			// Whatever decodes re-encodes to something that decodes the same.
			again := appendRecord(nil, r)
			var back wireRecord
			if _, err := decodeRecords(again, func(x *wireRecord) { back = *x }); err != nil || back != *r {
				t.Fatalf("re-encode of %+v: %+v, %v", *r, back, err)
			}
		})
	})
}

// BenchmarkWire measures encoding and decoding one delta record (an IPv4
// key and a 60-byte state, a typical TCP connection with NAT).
func BenchmarkWire(b *testing.B) {
	r := wireRecord{bucket: 1234, epoch: 1 << 20, key: testKey(b, 7), rec: conntable.Record{Version: 99, State: string(make([]byte, 60))}}
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 256)
		for b.Loop() {
			buf = appendRecord(buf[:0], &r)
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		buf := appendRecord(nil, &r)
		var got int
		for b.Loop() {
			if _, err := decodeRecords(buf, func(*wireRecord) { got++ }); err != nil {
				b.Fatal(err)
			}
		}
	})
}
