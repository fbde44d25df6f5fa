package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/connsync/connsync/fsm"
)

var (
	// ErrNotReady: this member is the leader but has not yet applied its
	// barrier for the term; retry shortly.
	ErrNotReady = errors.New("server: leader is not ready yet")
	// ErrNoLeader: the site has no known leader (election in progress, or no
	// quorum).
	ErrNoLeader = errors.New("server: no leader")
	// ErrShutdown: the member is shutting down.
	ErrShutdown = errors.New("server: shutting down")
)

// codeFor maps every domain error to its gRPC code. It is the one place that
// decides what clients see.
var codeFor = map[*fsm.Error]codes.Code{
	fsm.ErrInvalid:            codes.InvalidArgument,
	fsm.ErrUnknownMember:      codes.InvalidArgument,
	fsm.ErrClaimConflict:      codes.FailedPrecondition,
	fsm.ErrEpochMismatch:      codes.FailedPrecondition,
	fsm.ErrLockHeld:           codes.FailedPrecondition,
	fsm.ErrTokenMismatch:      codes.FailedPrecondition,
	fsm.ErrMemberNotAlive:     codes.FailedPrecondition,
	fsm.ErrSiteMismatch:       codes.FailedPrecondition,
	fsm.ErrStaleRequest:       codes.FailedPrecondition,
	fsm.ErrAssignmentChanged:  codes.Aborted,
	fsm.ErrSiteMode:           codes.FailedPrecondition,
	fsm.ErrNotClaimed:         codes.NotFound,
	fsm.ErrLockNotHeld:        codes.NotFound,
	fsm.ErrSiteNotInitialised: codes.Unavailable,
}

// raftUnavailable are the Raft errors that mean "try again, maybe elsewhere".
var raftUnavailable = []error{
	raft.ErrNotLeader, raft.ErrLeadershipLost, raft.ErrLeadershipTransferInProgress,
	raft.ErrRaftShutdown, raft.ErrEnqueueTimeout, raft.ErrAbortedByRestore, raft.ErrNotVoter,
	ErrNotReady, ErrNoLeader, ErrShutdown,
}

// toStatus converts any error from the server's layers to a gRPC status.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var fe *fsm.FieldError
	if errors.As(err, &fe) {
		return status.Error(codes.InvalidArgument, fe.Error())
	}
	var de *fsm.Error
	if errors.As(err, &de) {
		for sentinel, code := range codeFor {
			if errors.Is(de, sentinel) {
				return status.Error(code, de.Error())
			}
		}
	}
	for _, e := range raftUnavailable {
		if errors.Is(err, e) {
			return status.Error(codes.Unavailable, err.Error())
		}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// invalid is an INVALID_ARGUMENT naming field.
func invalid(field, format string, args ...any) error {
	return status.Error(codes.InvalidArgument, field+": "+fmt.Sprintf(format, args...))
}
