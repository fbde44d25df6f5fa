package repl

// Peer is what a member knows of the other site of a dual-site cluster
// (docs/SITES.md): on the active site, each bucket is also streamed to the
// standby site's primary of that bucket, which holds its remote backup.
// A Peer is never modified once published.
type Peer struct {
	Site    string
	Standby bool
	// LeaseEpoch is the peer site's recorded site-lease epoch (StatusResponse).
	LeaseEpoch uint64
	// Addrs maps the peer site's live members to their gRPC addresses.
	Addrs map[string]string
	// Buckets is the peer site's bucket table (nil until it is known).
	Buckets []PeerBucket
}

// PeerBucket is one bucket of the peer site's table, as far as replication
// needs it.
type PeerBucket struct {
	// Primary is the peer member holding the bucket's remote backup (on a
	// standby site) and Epoch its assignment's epoch there.
	Primary string
	Epoch   uint64
	// CopySynced: Primary has the full sync of the bucket.
	CopySynced bool
}

// remoteTarget returns the peer member that holds bucket b's remote backup
// and the peer's epoch for it, or "" when this member's site should not
// stream the bucket to the peer (the peer is not a standby site, or its
// table or that member's address is not known).
func (p *Peer) remoteTarget(b uint32, buckets int) (string, uint64, bool) {
	if p == nil || !p.Standby || len(p.Buckets) != buckets || int(b) >= len(p.Buckets) {
		return "", 0, false
	}
	pb := p.Buckets[b]
	if _, ok := p.Addrs[pb.Primary]; !ok || pb.Primary == "" {
		return "", 0, false
	}
	return pb.Primary, pb.Epoch, pb.CopySynced
}
