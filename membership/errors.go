package membership

import "errors"

var (
	// ErrInvalidConfig wraps every problem Config.Validate finds; the
	// message names the field.
	ErrInvalidConfig = errors.New("membership: invalid config")
	// ErrInvalidMeta: metadata that cannot be gossiped (too large, or an
	// attempt to change the process incarnation), or bytes that do not
	// decode as Meta.
	ErrInvalidMeta = errors.New("membership: invalid meta")
	// ErrShutdown: the pool has been shut down.
	ErrShutdown = errors.New("membership: pool is shut down")
	// ErrLeft: the pool has left; memberlist cannot rejoin a pool that left,
	// so only Shutdown remains. Start a new pool (with a new incarnation) to
	// come back.
	ErrLeft = errors.New("membership: pool has left")
	// ErrJoin: none of the addresses given to Join could be reached.
	ErrJoin = errors.New("membership: join failed")
	// ErrBroadcastTimeout: a metadata change or leave notice was not
	// gossiped to the other members within the timeout. The change is in
	// effect locally and keeps spreading.
	ErrBroadcastTimeout = errors.New("membership: broadcast timed out")
)
