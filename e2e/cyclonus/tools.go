//go:build tools

// This file is never compiled (the tools build tag); it keeps cyclonus' command and everything it imports in
// go.mod, which `go build github.com/mattfenwick/cyclonus/cmd/cyclonus` builds from.
package cyclonus

import (
	_ "github.com/mattfenwick/cyclonus/cmd/cyclonus"
)
