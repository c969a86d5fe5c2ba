package memnode

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports keeps the state machine pure: non-test files import only the
// standard library, and nothing that reaches clocks, randomness, I/O or
// concurrency.
func TestImports(t *testing.T) {
	forbidden := map[string]bool{}
	for _, p := range strings.Fields("time math/rand math/rand/v2 crypto/rand os net sync sync/atomic io/fs syscall unsafe reflect runtime") {
		forbidden[p] = true
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			first, _, _ := strings.Cut(path, "/")
			if strings.Contains(first, ".") {
				t.Errorf("%s imports %q: memnode may import the standard library only", name, path)
			}
			if forbidden[path] || strings.HasPrefix(path, "net/") || strings.HasPrefix(path, "os/") {
				t.Errorf("%s imports %q: memnode must not use clocks, randomness, I/O or concurrency", name, path)
			}
		}
	}
}
