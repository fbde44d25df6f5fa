package server

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	pb "github.com/connsync/connsync/api/connsync/v1"
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
	ln, err := cfg.Network.Listen(cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("witness: listen %s: %w", cfg.Bind, err)
	}
	w := &Witness{srv: grpc.NewServer(), ln: ln, done: make(chan struct{})}
	pb.RegisterSiteLeaseServiceServer(w.srv, &witnessService{acc: newLeaseAcceptor(cfg.MaxLease), logger: cfg.Logger})
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

// Close stops the witness (what it granted is forgotten).
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
