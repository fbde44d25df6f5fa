package server

import (
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/connsync/connsync/fsm"
)

// allDomainErrors lists every sentinel of fsm/errors.go. A sentinel added
// there must be added here and to codeFor.
var allDomainErrors = []*fsm.Error{
	fsm.ErrClaimConflict, fsm.ErrNotClaimed, fsm.ErrEpochMismatch, fsm.ErrLockHeld,
	fsm.ErrLockNotHeld, fsm.ErrTokenMismatch, fsm.ErrUnknownMember, fsm.ErrMemberNotAlive,
	fsm.ErrSiteMismatch, fsm.ErrSiteNotInitialised, fsm.ErrInvalid, fsm.ErrStaleRequest,
	fsm.ErrAssignmentChanged, fsm.ErrSiteMode,
}

// wantStatus checks that err is a status with code and a message containing sub.
func wantStatus(t *testing.T, what string, err error, code codes.Code, sub string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Errorf("%s: %T %v is not a gRPC status", what, err, err)
		return
	}
	if st.Code() != code {
		t.Errorf("%s: code %v (%q), want %v", what, st.Code(), st.Message(), code)
	}
	if !strings.Contains(st.Message(), sub) {
		t.Errorf("%s: message %q does not contain %q", what, st.Message(), sub)
	}
}

func TestCodeFor_CoversEveryDomainError(t *testing.T) {
	seen := map[fsm.Code]bool{}
	for _, e := range allDomainErrors {
		if seen[e.Code] {
			t.Errorf("duplicate code %d in allDomainErrors", e.Code)
		}
		seen[e.Code] = true
		code, ok := codeFor[e]
		if !ok {
			t.Errorf("codeFor has no entry for %q (code %d)", e.Msg, e.Code)
			continue
		}
		if code == codes.OK || code == codes.Unknown || code == codes.Internal {
			t.Errorf("codeFor[%q] = %v: a domain error needs a specific code", e.Msg, code)
		}
	}
	// Codes are numbered 1..n without gaps: a sentinel with the next code
	// that is missing from allDomainErrors shows as a gap here.
	for c := fsm.Code(1); c <= fsm.Code(len(allDomainErrors)); c++ {
		if !seen[c] {
			t.Errorf("no sentinel with code %d in allDomainErrors", c)
		}
	}
	// Every key of codeFor is a sentinel (not a detailed copy).
	for e := range codeFor {
		found := false
		for _, s := range allDomainErrors {
			found = found || s == e
		}
		if !found {
			t.Errorf("codeFor key %q (code %d) is not a known sentinel", e.Msg, e.Code)
		}
	}
	if len(codeFor) != len(allDomainErrors) {
		t.Errorf("codeFor has %d entries, want %d", len(codeFor), len(allDomainErrors))
	}
}

// TestCodeFor_EverySentinelInFSMSource reads the fsm package's source and
// finds every domain error sentinel declared there (var ErrX = &Error{N, ...}),
// so a sentinel added to fsm without a codeFor entry (or without being added
// to allDomainErrors) fails here.
func TestCodeFor_EverySentinelInFSMSource(t *testing.T) {
	sentinels := fsmSentinels(t, filepath.Join("..", "fsm"))
	mapped := map[fsm.Code]bool{}
	for e := range codeFor {
		mapped[e.Code] = true
	}
	listed := map[fsm.Code]bool{}
	for _, e := range allDomainErrors {
		listed[e.Code] = true
	}
	for name, code := range sentinels {
		if !mapped[code] {
			t.Errorf("fsm.%s (code %d) has no entry in codeFor", name, code)
		}
		if !listed[code] {
			t.Errorf("fsm.%s (code %d) is missing from allDomainErrors", name, code)
		}
	}
	if len(sentinels) != len(allDomainErrors) {
		t.Errorf("found %d sentinels in fsm's source, allDomainErrors lists %d: %v",
			len(sentinels), len(allDomainErrors), sentinels)
	}
}

// TestFSMSentinels checks the source scanner itself finds a new sentinel in
// either literal form.
func TestFSMSentinels(t *testing.T) {
	dir := t.TempDir()
	src := `package fsm

var (
	ErrA = &Error{1, "a"}
	ErrB = &Error{Code: 2, Msg: "b"}
	errC = &Error{3, "unexported"}
	NotAnError = 4
)

var ErrD = &Error{Msg: "d", Code: 0x10}
`
	if err := os.WriteFile(filepath.Join(dir, "errors.go"), []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "x_test.go"), []byte("package fsm\nvar ErrT = &Error{9, \"t\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got := fsmSentinels(t, dir)
	want := map[string]fsm.Code{"ErrA": 1, "ErrB": 2, "ErrD": 16}
	if len(got) != len(want) {
		t.Fatalf("fsmSentinels = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("fsmSentinels[%s] = %d, want %d", k, got[k], v)
		}
	}
}

// fsmSentinels returns the exported sentinels &Error{...} declared in the
// non-test Go files of dir, by name.
func fsmSentinels(t *testing.T, dir string) map[string]fsm.Code {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("fsm sources in %s: %v (%d files)", dir, err, len(files))
	}
	out := map[string]fsm.Code{}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatalf("parse %s: %v", name, err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			vs, ok := n.(*ast.ValueSpec)
			if !ok {
				return true
			}
			for i, id := range vs.Names {
				if i >= len(vs.Values) || !id.IsExported() {
					continue
				}
				if code, ok := sentinelCode(vs.Values[i]); ok {
					out[id.Name] = code
				}
			}
			return true
		})
	}
	return out
}

// sentinelCode returns N for an expression &Error{N, ...} or &Error{Code: N, ...}.
func sentinelCode(e ast.Expr) (fsm.Code, bool) {
	u, ok := e.(*ast.UnaryExpr)
	if !ok || u.Op != token.AND {
		return 0, false
	}
	cl, ok := u.X.(*ast.CompositeLit)
	if !ok {
		return 0, false
	}
	if id, ok := cl.Type.(*ast.Ident); !ok || id.Name != "Error" || len(cl.Elts) == 0 {
		return 0, false
	}
	v := cl.Elts[0]
	for _, el := range cl.Elts {
		if kv, ok := el.(*ast.KeyValueExpr); ok {
			if k, ok := kv.Key.(*ast.Ident); ok && k.Name == "Code" {
				v = kv.Value
			}
		}
	}
	lit, ok := v.(*ast.BasicLit)
	if !ok || lit.Kind != token.INT {
		return 0, false
	}
	n, err := strconv.ParseUint(lit.Value, 0, 32)
	if err != nil {
		return 0, false
	}
	return fsm.Code(n), true
}

func TestToStatus_DomainErrors(t *testing.T) {
	for sentinel, code := range codeFor {
		wantStatus(t, sentinel.Msg, toStatus(sentinel), code, sentinel.Msg)

		// A detailed error as fsm's errorf builds it maps the same.
		detailed := &fsm.Error{Code: sentinel.Code, Msg: sentinel.Msg + ": claimed by m2 at epoch 7"}
		wantStatus(t, "detailed "+sentinel.Msg, toStatus(detailed), code, "claimed by m2 at epoch 7")

		// And so does one wrapped by another layer.
		wrapped := fmt.Errorf("apply: %w", detailed)
		wantStatus(t, "wrapped "+sentinel.Msg, toStatus(wrapped), code, sentinel.Msg)
	}
}

func TestToStatus_UnknownDomainCodeIsInternal(t *testing.T) {
	err := toStatus(&fsm.Error{Code: 9999, Msg: "fsm: from the future"})
	wantStatus(t, "unknown domain code", err, codes.Internal, "from the future")
}

func TestToStatus_FieldError(t *testing.T) {
	fe := &fsm.FieldError{Field: "keys[3].src_ip", Msg: `"x" is not an IP address`}
	wantStatus(t, "FieldError", toStatus(fe), codes.InvalidArgument, "keys[3].src_ip")
	wantStatus(t, "wrapped FieldError", toStatus(fmt.Errorf("parse: %w", fe)), codes.InvalidArgument, "keys[3].src_ip")
}

func TestToStatus_RaftUnavailable(t *testing.T) {
	for _, e := range []error{
		raft.ErrNotLeader, raft.ErrLeadershipLost, raft.ErrLeadershipTransferInProgress,
		raft.ErrRaftShutdown, raft.ErrEnqueueTimeout, raft.ErrAbortedByRestore, raft.ErrNotVoter,
		ErrNotReady, ErrNoLeader, ErrShutdown,
	} {
		wantStatus(t, e.Error(), toStatus(e), codes.Unavailable, e.Error())
		wrapped := fmt.Errorf("server: forwarded by m2: %w", e)
		wantStatus(t, "wrapped "+e.Error(), toStatus(wrapped), codes.Unavailable, "forwarded by m2")
	}
}

func TestToStatus_Context(t *testing.T) {
	wantStatus(t, "DeadlineExceeded", toStatus(context.DeadlineExceeded), codes.DeadlineExceeded, "")
	wantStatus(t, "wrapped DeadlineExceeded", toStatus(fmt.Errorf("wait: %w", context.DeadlineExceeded)),
		codes.DeadlineExceeded, "wait")
	wantStatus(t, "Canceled", toStatus(context.Canceled), codes.Canceled, "")
}

func TestToStatus_StatusPassesThrough(t *testing.T) {
	in := status.Error(codes.ResourceExhausted, "too many")
	if out := toStatus(in); out != in {
		t.Fatalf("toStatus(status) = %v, want the same error %v", out, in)
	}
	in = invalid("ttl", "is required")
	if out := toStatus(in); out != in {
		t.Fatalf("toStatus(invalid) = %v, want the same error", out)
	}
	// A status carrying a code toStatus would otherwise pick differently.
	in = status.Error(codes.NotFound, raft.ErrNotLeader.Error())
	wantStatus(t, "status NotFound", toStatus(in), codes.NotFound, "")
}

func TestToStatus_NilAndUnknown(t *testing.T) {
	if err := toStatus(nil); err != nil {
		t.Fatalf("toStatus(nil) = %v", err)
	}
	wantStatus(t, "unknown", toStatus(errors.New("disk on fire")), codes.Internal, "disk on fire")
}

func TestInvalid(t *testing.T) {
	wantStatus(t, "invalid", invalid("member_id", "%q is bad", "x"), codes.InvalidArgument, `member_id: "x" is bad`)
}
