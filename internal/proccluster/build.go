package proccluster

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// connsyncdPackage is the import path Build compiles.
const connsyncdPackage = "github.com/connsync/connsync/cmd/connsyncd"

// Build compiles connsyncd into dir with `go build` and returns the
// binary's path. It works when the current directory is inside the
// connsync module (a checkout); elsewhere pass a binary instead.
func Build(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "connsyncd")
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, connsyncdPackage).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building connsyncd with `go build %s` failed (run from a connsync checkout, or give the path of a connsyncd binary): %v\n%s",
			connsyncdPackage, err, strings.TrimSpace(string(out)))
	}
	return bin, nil
}
