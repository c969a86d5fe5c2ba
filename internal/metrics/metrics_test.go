package metrics

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

// TestCollectorReportsHostsAndMemnodes: after writes, /metrics of a 3-host
// cluster names exactly one leader per memnode, counts the proposals, and
// reports memnode sizes from the leaders; the output passes promlint.
func TestCollectorReportsHostsAndMemnodes(t *testing.T) {
	c, err := cluster.Start(cluster.Config{NoSync: true, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(ctx, client.Config{Seeds: c.Seeds()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for mn := uint64(0); mn < 3; mn++ {
		tx := client.NewTx()
		tx.Write(mn, 0x10, []byte("metrics"))
		if res, err := cl.Exec(ctx, tx); err != nil || !res.Committed {
			t.Fatalf("write memnode %d: %v %v", mn, res, err)
		}
	}

	reg := Registry(c.Hosts...)
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	srv, err := Serve("127.0.0.1:0", reg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	// Leadership may still be settling right after the writes: wait until
	// every memnode has exactly one leader among the hosts.
	for {
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		leaders := map[string]float64{}
		var proposals float64
		inDoubt := 0
		for _, f := range families {
			for _, m := range f.GetMetric() {
				switch f.GetName() {
				case "tutti_raft_is_leader":
					leaders[label(m, "memnode")] += m.GetGauge().GetValue()
				case "tutti_raft_proposals_total":
					proposals += m.GetCounter().GetValue()
				case "tutti_memnode_in_doubt":
					inDoubt++
				}
			}
		}
		ok := len(leaders) == 3 && proposals >= 3 && inDoubt == 3
		for _, n := range leaders {
			ok = ok && n == 1
		}
		if ok {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("leaders per memnode %v, proposals %v, memnodes with sizes %d", leaders, proposals, inDoubt)
		}
		time.Sleep(20 * time.Millisecond)
	}

	resp, err := http.Get("http://" + srv.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`tutti_raft_applied_index{host="2",memnode="1"}`, `tutti_recovery_resolved_total{host="3",outcome="commit"}`, `tutti_raft_log_segments{host="1"}`, "go_goroutines"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
