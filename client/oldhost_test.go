package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// A host built before append items ignores a request's appends (unknown
// fields) and applies its other items: a gcs view change sent to it wrote
// the new view without its record. The client sends appends under their
// own kind, KIND_EXEC_APPEND, which such a host refuses like any kind it
// does not know ("unknown request kind", nothing applied): Exec returns
// ErrInvalid saying to upgrade the hosts, and sends nothing else. Before,
// the request went as KIND_EXEC, the fake old host applied it without
// the append, and Exec returned an unknown outcome.
func TestHostWithoutAppendsRefusesThem(t *testing.T) {
	f := startFakeHost(t)
	applied := 0
	f.setAnswer(func(r *tuttipb.Request) *tuttipb.Response {
		// As memnode/service's server before appends: kinds 1..6 only.
		if k := r.GetKind(); k < tuttipb.Kind_KIND_EXEC || k > tuttipb.Kind_KIND_ABORT_UNLESS_VOTED {
			return &tuttipb.Response{Id: r.GetId(), Status: tuttipb.Status_STATUS_INVALID, FailedCompare: -1,
				Error: fmt.Sprintf("unknown request kind %d", k)}
		}
		if len(r.GetWrites()) > 0 {
			applied++ // its appends ignored
		}
		return ok(r)
	})
	cl := newFakeClient(t, f)
	defer closeWithin(t, cl)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tx := NewTx().Write(1, 64, []byte("view+1")).Append(1, Append{Tail: 0, Head: 16, Limit: 4096, Ring: 4096, Size: 4096, Data: []byte("record")})
	res, err := cl.Exec(ctx, tx)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "upgrade memnode hosts") {
		t.Fatalf("append to a host that does not know appends: %+v, %v; want ErrInvalid telling to upgrade the hosts", res, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if applied != 0 || len(f.reqs) != 1 || f.reqs[0].GetKind() != tuttipb.Kind_KIND_EXEC_APPEND {
		var kinds []tuttipb.Kind
		for _, r := range f.reqs {
			kinds = append(kinds, r.GetKind())
		}
		t.Fatalf("the host applied %d requests without their appends; requests sent: %v; want one KIND_EXEC_APPEND, refused", applied, kinds)
	}
}
