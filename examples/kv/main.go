// Command kv is a replicated key-value store on a tutti group: every replica
// applies the same commands in the same total order, on several cores (a
// gcs.Parallel scheduler with the key as conflict key), and a replica that
// joins later receives the state by state transfer. Each replica serves a
// small HTTP front end:
//
//	GET    /KEY           the value (404 if absent)
//	PUT    /KEY           set the value to the request body
//	DELETE /KEY           delete (404 if absent)
//	POST   /KEY?incr=N    add N (default 1) to a decimal integer; prints it
//	POST   /_clear        delete every key (a barrier)
//	GET    /_state        JSON: view, members, position, key count, digest
//
// A write returns once this replica applied it, so a GET on the same
// replica sees it; replicas at the same position have the same digest.
//
//	go run ./examples/kv --listen 127.0.0.1:8081
//
// See README.md. It uses only public tutti packages.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/examples/kv/kvstore"
	"github.com/tutti-gcs/tutti/gcs"
	"github.com/tutti-gcs/tutti/membership"
)

// maxValue bounds a PUT body (a multicast message must fit a batch).
const maxValue = 64 << 10

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, stop, os.Args[1:], os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errUsage):
		os.Exit(2) // the flag package printed what is wrong
	case err != nil:
		fmt.Fprintln(os.Stderr, "kv:", strings.TrimPrefix(err.Error(), "kv: ")) // kvstore's errors say "kv: "
		os.Exit(1)
	}
}

// errUsage: the command line is wrong and the flag package said why.
var errUsage = errors.New("usage")

// run serves one replica until ctx ends (then stop, which restores the
// default signal handling so a second Ctrl-C kills), with the flags in
// args; usage messages go to stderr.
func run(ctx context.Context, stop func(), args []string, stderr io.Writer) error {
	host, _ := os.Hostname()
	seed := os.Getenv("TUTTI_SEED")
	if seed == "" {
		seed = "127.0.0.1:7400"
	}
	fs := flag.NewFlagSet("kv", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		fSeed    = fs.String("seed", seed, "address of any host of the tutti cluster (env TUTTI_SEED)")
		name     = fs.String("name", fmt.Sprintf("kv-%s-%d", host, os.Getpid()), "this replica's process id (unique)")
		group    = fs.String("group", "kv", "group of the replicas")
		listen   = fs.String("listen", "127.0.0.1:8081", "HTTP address")
		workers  = fs.Int("workers", 0, "apply workers (default: number of CPUs)")
		gossip   = fs.String("gossip", "", "gossip seeds (e.g. 127.0.0.1:8400 for 'tutti up'): crashed replicas are then removed from the view")
		gossipAt = fs.String("gossip-bind", "127.0.0.1:0", "gossip listen address with --gossip")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "kv: unexpected argument %q: kv takes only flags (see -h)\n", fs.Arg(0))
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}

	// Listen first: an address that cannot be served must fail before this
	// replica joins the group (a view change and a state transfer at every
	// other replica).
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	defer ln.Close()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cl, err := client.New(sctx, client.Config{Seeds: strings.Split(*fSeed, ",")})
	if err != nil {
		return err
	}
	defer cl.Close()
	var mn *membership.Node
	if *gossip != "" {
		mn, err = membership.Start(sctx, membership.Config{ID: *name, Client: cl, Bind: *gossipAt, Seeds: strings.Split(*gossip, ",")})
		if err != nil {
			return err
		}
		defer func() {
			lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := mn.Leave(lctx); err != nil {
				log.Printf("leaving gossip: %v", err)
			}
		}()
	}
	node, err := gcs.Open(sctx, gcs.Config{Client: cl, ID: *name, Membership: mn})
	if err != nil {
		return err
	}
	defer node.Close()
	r, err := kvstore.Join(sctx, node, *group, kvstore.Config{Workers: *workers})
	if err != nil {
		return err
	}
	st, _ := r.State(sctx)
	log.Printf("replica %s of group %s (view %d: %s), state at position %d, serving http://%s",
		r.Name(), *group, st.View, strings.Join(st.Members, ", "), st.Pos, ln.Addr())

	srv := &http.Server{Handler: handler(r), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err = <-served:
	case <-r.Done():
		// Evicted (or the group closed): the map is no longer kept up to
		// date, so stop serving it.
		err = fmt.Errorf("replica stopped: %w", r.Err())
	}
	stop()
	lctx, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	return errors.Join(err, srv.Shutdown(lctx), r.Leave(lctx))
}

// handler serves the HTTP front end of r.
func handler(r *kvstore.Replica) http.Handler {
	mux := http.NewServeMux()
	do := func(w http.ResponseWriter, req *http.Request, c kvstore.Command) (kvstore.Result, bool) {
		res, err := r.Do(req.Context(), c)
		switch {
		case errors.Is(err, kvstore.ErrBadCommand):
			http.Error(w, err.Error(), http.StatusBadRequest)
		case err != nil:
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		case res.Err != nil:
			http.Error(w, res.Err.Error(), http.StatusConflict)
		default:
			w.Header().Set("Kv-Pos", strconv.FormatUint(res.Pos, 10))
			return res, true
		}
		return res, false
	}
	mux.HandleFunc("GET /_state", func(w http.ResponseWriter, req *http.Request) {
		st, err := r.State(req.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		b, _ := json.Marshal(st)
		w.Write(append(b, '\n'))
	})
	mux.HandleFunc("POST /_clear", func(w http.ResponseWriter, req *http.Request) {
		if _, ok := do(w, req, kvstore.Clear()); ok {
			w.WriteHeader(http.StatusNoContent)
		}
	})
	mux.HandleFunc("GET /{key...}", func(w http.ResponseWriter, req *http.Request) {
		v, ok := r.Get(req.PathValue("key"))
		if !ok {
			http.NotFound(w, req)
			return
		}
		w.Write(v)
	})
	mux.HandleFunc("PUT /{key...}", func(w http.ResponseWriter, req *http.Request) {
		v, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxValue))
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		if _, ok := do(w, req, kvstore.Set(req.PathValue("key"), v)); ok {
			w.WriteHeader(http.StatusNoContent)
		}
	})
	mux.HandleFunc("DELETE /{key...}", func(w http.ResponseWriter, req *http.Request) {
		res, ok := do(w, req, kvstore.Del(req.PathValue("key")))
		switch {
		case ok && res.Found:
			w.WriteHeader(http.StatusNoContent)
		case ok:
			http.NotFound(w, req)
		}
	})
	mux.HandleFunc("POST /{key...}", func(w http.ResponseWriter, req *http.Request) {
		n := int64(1)
		if s := req.URL.Query().Get("incr"); s != "" {
			var err error
			if n, err = strconv.ParseInt(s, 10, 64); err != nil {
				http.Error(w, "incr: "+err.Error(), http.StatusBadRequest)
				return
			}
		}
		if res, ok := do(w, req, kvstore.Incr(req.PathValue("key"), n)); ok {
			w.Write(append(res.Value, '\n'))
		}
	})
	return mux
}
