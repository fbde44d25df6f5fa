package main

import (
	"context"
	"net"
	"time"

	"github.com/connsync/connsync/internal/wan"
	"github.com/connsync/connsync/server"
)

// wanNetwork is the real network, with every connection this member dials
// to one of the addresses in to delayed by d each way (-emulate-wan-delay:
// two sites on one machine, as far apart as two data centres, where the
// kernel has no tc netem). Connections others dial to this member are not
// delayed here: their dialler's own flag covers them.
type wanNetwork struct {
	server.TCPNetwork
	d  time.Duration
	to map[string]bool
}

func (n wanNetwork) Dial(ctx context.Context, addr string) (net.Conn, error) {
	c, err := n.TCPNetwork.Dial(ctx, addr)
	if err != nil || !n.to[addr] {
		return c, err
	}
	return wan.Delay(c, n.d), nil
}
