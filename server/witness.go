package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/fsm"
)

// WitnessConfig configures a witness: the third acceptor of the site lease
// (docs/SITES.md), at a third location. It runs no Raft and holds no
// bucket; it only answers SiteLeaseService.
type WitnessConfig struct {
	// Bind is the gRPC address it listens on.
	Bind string
	// MaxLease is the longest grant it gives; it must be at least the
	// sites' SiteLease. A restarted witness grants a new holder nothing for
	// this long (it may have forgotten a grant).
	MaxLease time.Duration
	// DataDir, if set, is where the witness records its last grant (the
	// holder site and its epoch, fsynced before it answers; not renewals),
	// so that once restarted it still refuses a site that another has
	// superseded. Empty: kept in memory only, forgotten on a restart.
	DataDir string
	// Network is the transport (nil = TCP); Logger receives its logs.
	Network Network
	Logger  hclog.Logger
}

// Witness is a running witness.
type Witness struct {
	srv  *grpc.Server
	ln   net.Listener
	done chan struct{}
}

// NewWitness starts a witness.
func NewWitness(cfg WitnessConfig) (*Witness, error) {
	if cfg.MaxLease <= 0 {
		return nil, fmt.Errorf("witness: max lease %v must be > 0", cfg.MaxLease)
	}
	if cfg.Network == nil {
		cfg.Network = TCPNetwork{}
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	acc := newLeaseAcceptor(cfg.MaxLease)
	if cfg.DataDir != "" {
		path := filepath.Join(cfg.DataDir, witnessStateFile)
		st, err := loadWitnessState(path)
		if err != nil {
			return nil, err
		}
		acc.holder, acc.epoch = st.Holder, st.Epoch
		acc.persist = func(holder string, epoch uint64) error {
			return saveWitnessState(path, witnessState{Holder: holder, Epoch: epoch})
		}
		cfg.Logger.Info("witness state loaded", "path", path, "holder", st.Holder, "epoch", st.Epoch)
	}
	ln, err := cfg.Network.Listen(cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("witness: listen %s: %w", cfg.Bind, err)
	}
	w := &Witness{srv: grpc.NewServer(), ln: ln, done: make(chan struct{})}
	pb.RegisterSiteLeaseServiceServer(w.srv, &witnessService{acc: acc, logger: cfg.Logger})
	hs := health.NewServer()
	hs.SetServingStatus(pb.SiteLeaseService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(w.srv, hs)
	go func() {
		defer close(w.done)
		_ = w.srv.Serve(ln)
	}()
	cfg.Logger.Info("witness serving", "addr", ln.Addr().String())
	return w, nil
}

// Addr returns the address the witness listens on.
func (w *Witness) Addr() string { return w.ln.Addr().String() }

// Close stops the witness (what it granted is forgotten, unless it has a
// DataDir).
func (w *Witness) Close() {
	w.srv.Stop()
	<-w.done
}

type witnessService struct {
	pb.UnimplementedSiteLeaseServiceServer
	acc    *leaseAcceptor
	logger hclog.Logger
}

func (w *witnessService) GrantSiteLease(_ context.Context, req *pb.GrantSiteLeaseRequest) (*pb.GrantSiteLeaseResponse, error) {
	resp, err := w.acc.grant(req, time.Now())
	if err == nil && resp.Granted {
		w.logger.Debug("site lease granted", "site", req.Site, "epoch", req.Epoch)
	}
	return resp, err
}

// witnessStateFile is the witness's record in its DataDir.
const witnessStateFile = "witness-state.json"

// witnessState is what a witness records of its last grant.
type witnessState struct {
	Holder string `json:"holder"`
	Epoch  uint64 `json:"epoch"`
}

// loadWitnessState reads the record at path; none yet is the zero state.
func loadWitnessState(path string) (witnessState, error) {
	var st witnessState
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return st, nil
	case err != nil:
		return st, fmt.Errorf("witness: read its state: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil || (st.Holder != "" && !fsm.ValidID(st.Holder)) {
		return st, fmt.Errorf("witness: %s is not a witness state file (%v); restore it, or remove it only if no site can have been superseded (see docs/SITES.md)", path, err)
	}
	return st, nil
}

// saveWitnessState replaces the record at path durably: a temporary file
// written and fsynced, renamed over it, and the directory fsynced.
func saveWitnessState(path string, st witnessState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, witnessStateFile+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename: already gone
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
