package server

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/connsync/connsync/fsm"
)

// The peers file gives a restarted member addresses to join through even
// when its state machine knows nobody; a broken file is ignored.
func TestKnownPeers_File(t *testing.T) {
	s := &Server{cfg: Config{DataDir: t.TempDir(), GRPCBind: "127.0.0.1:7420"}, fsm: fsm.New()}
	if got := s.knownPeers(); len(got) != 0 {
		t.Fatalf("no state, no file: %v", got)
	}
	path := filepath.Join(s.cfg.DataDir, peersFile)
	if err := writePeers(path, []string{"127.0.0.1:7430", "127.0.0.1:7420", "127.0.0.1:7440"}); err != nil {
		t.Fatal(err)
	}
	if got := s.knownPeers(); !slices.Equal(got, []string{"127.0.0.1:7430", "127.0.0.1:7440"}) {
		t.Fatalf("from the file: %v (want its own address left out)", got)
	}
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := s.knownPeers(); len(got) != 0 {
		t.Fatalf("broken file: %v", got)
	}
}
