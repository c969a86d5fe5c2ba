package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/gcs"
)

// statusPage serves /status beside /metrics: the cluster as `tutti
// memnodes` and `tutti groups` print it (hosts, memnodes, Raft leaders and
// replica health, groups and their views), read through a client of the
// cluster that the page opens on first use. ?format=json gives one JSON
// object: {"memnodes": <tutti memnodes --json>, "groups": <tutti groups
// --json>, "errors": [...]}.
type statusPage struct {
	seeds   []string
	dial    []grpc.DialOption
	log     zerolog.Logger
	timeout time.Duration

	mu     sync.Mutex
	cl     *client.Client
	closed bool
}

func newStatusPage(seeds []string, dial []grpc.DialOption, log zerolog.Logger) *statusPage {
	return &statusPage{seeds: seeds, dial: dial, log: log, timeout: 5 * time.Second}
}

// client returns the page's client, connecting on first use.
func (s *statusPage) client(ctx context.Context) (*client.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("status page closed")
	}
	if s.cl == nil {
		cl, err := client.New(ctx, client.Config{Seeds: s.seeds, Logger: s.log, DialOptions: s.dial})
		if err != nil {
			return nil, err
		}
		s.cl = cl
	}
	return s.cl, nil
}

// Close closes the page's client.
func (s *statusPage) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.cl != nil {
		return s.cl.Close()
	}
	return nil
}

type statusJSON struct {
	Time     string          `json:"time"`
	Memnodes *memnodesJSON   `json:"memnodes,omitempty"`
	Groups   []groupInfoJSON `json:"groups"`
	Errors   []string        `json:"errors,omitempty"`
}

func (s *statusPage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	st := statusJSON{Time: time.Now().UTC().Format(time.RFC3339), Groups: []groupInfoJSON{}}
	var (
		d      *client.Directory
		states []client.MemnodeState
		gis    []gcs.GroupInfo
	)
	cl, err := s.client(ctx)
	if err != nil {
		st.Errors = append(st.Errors, fmt.Sprintf("connect: %v", err))
	} else {
		if d, states, err = cl.MemnodeStatus(ctx); err != nil {
			st.Errors = append(st.Errors, fmt.Sprintf("memnodes: %v", err))
		} else {
			st.Memnodes = &memnodesJSON{Version: d.Version, Config: d.Config, Hosts: d.Hosts, Memnodes: states}
		}
		// The memnodes as of now: a Node is cheap (no I/O) and must see
		// memnodes added since the last request.
		var n *gcs.Node
		if n, err = gcs.Open(ctx, gcs.Config{Client: cl, ID: defaultID("status"), Logger: s.log}); err == nil {
			gis, err = n.Groups(ctx)
			n.Close()
		}
		if err != nil {
			st.Errors = append(st.Errors, fmt.Sprintf("groups: %v", err))
		}
		for _, gi := range gis {
			st.Groups = append(st.Groups, groupJSON(gi))
		}
	}
	if r.URL.Query().Get("format") == "json" {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
		return
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "tutti status, %s\n\n", st.Time)
	for _, e := range st.Errors {
		fmt.Fprintf(&b, "error: %s\n", e)
	}
	if st.Memnodes != nil {
		_ = printMemnodes(&b, d, states, false)
	}
	fmt.Fprintf(&b, "\n%d groups\n\n", len(gis))
	_ = printGroups(&b, gis)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write(b.Bytes())
}
