// Package deploy_test is the chaos test on containers: three `tutti server`
// processes in FROM-scratch containers (Dockerfile, compose.yaml), killed,
// paused and cut off from the network while clients run a bank workload
// across memnodes and acknowledged single-memnode writes.
package deploy_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
)

const (
	project  = "tutti-chaos"
	image    = "tutti:chaos-test"
	accounts = 6
	initial  = 1000
	workers  = 4
)

var hostIPs = []string{"172.31.77.11", "172.31.77.12", "172.31.77.13"}

func container(i int) string { return fmt.Sprintf("%s_host%d_1", project, i+1) }

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func compose(t *testing.T, args ...string) string {
	t.Helper()
	return sh(t, "docker-compose", append([]string{"-p", project, "-f", "compose.yaml"}, args...)...)
}

// TestChaosOnContainers: faults on real processes (SIGKILL and restart from
// disk, SIGSTOP, network partition), one at a time, under load. Afterwards
// the bank's total is unchanged (atomicity of two-phase minitransactions
// across memnodes, recovery of in-doubt ones), every acknowledged write is
// there (durability), and every memnode serves again.
func TestChaosOnContainers(t *testing.T) {
	if _, err := exec.LookPath("docker-compose"); err != nil {
		t.Skip("docker-compose not installed: the chaos test needs Docker")
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("no Docker daemon: %v %s", err, out)
	}

	// The image: the static binary in a FROM-scratch image.
	ctxDir := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(ctxDir, "tutti"), "../cmd/tutti")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	df, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), df, 0o644); err != nil {
		t.Fatal(err)
	}
	sh(t, "docker", "build", "-q", "-t", image, ctxDir)
	t.Setenv("TUTTI_IMAGE", image)

	// A clean start: no containers, network or volumes of an earlier run.
	compose(t, "down", "-v", "--remove-orphans")
	compose(t, "up", "-d")
	t.Cleanup(func() {
		if t.Failed() {
			for i := range hostIPs {
				out, _ := exec.Command("docker", "logs", "--tail", "30", container(i)).CombinedOutput()
				t.Logf("logs of %s:\n%s", container(i), out)
			}
		}
		// A fault may still be in place: a paused container cannot be
		// stopped.
		for i := range hostIPs {
			exec.Command("docker", "unpause", container(i)).Run()
		}
		if out, err := exec.Command("docker-compose", "-p", project, "-f", "compose.yaml", "down", "-v", "--remove-orphans").CombinedOutput(); err != nil {
			t.Logf("docker-compose down: %v\n%s", err, out)
		}
	})

	seeds := make([]string, len(hostIPs))
	for i, ip := range hostIPs {
		seeds[i] = ip + ":7400"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var cl *client.Client
	for cl == nil {
		c, err := client.New(ctx, client.Config{Seeds: seeds})
		if err == nil {
			cl = c
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("cluster never answered: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	defer cl.Close()

	// Every fault below is a minority fault only once every host holds
	// its replicas: a host's first boot waits until it has heard every
	// host it shares a memnode with, and two hosts can commit while the
	// third still waits (CI once killed host 3 two seconds after start,
	// before host 2 had heard it: host 2 then waited for host 3 to come
	// back, and host 1 alone had no quorum). So wait until every replica
	// of every memnode is up.
	retry(ctx, t, "every replica up", func(ctx context.Context) error {
		_, mns, err := cl.MemnodeStatus(ctx)
		if err != nil {
			return err
		}
		if len(mns) != 3 {
			return fmt.Errorf("%d memnodes, want 3", len(mns))
		}
		for _, m := range mns {
			if len(m.Voters) != len(hostIPs) {
				return fmt.Errorf("memnode %d: voters %v", m.ID, m.Voters)
			}
			for _, r := range m.Replicas {
				if r.Health != client.HealthUp {
					return fmt.Errorf("memnode %d: the replica on host %d is %s", m.ID, r.Host, r.Health)
				}
			}
		}
		return nil
	})

	// Bank: account i on memnode i%3. One two-phase minitransaction opens
	// them all.
	open := client.NewTx()
	for i := range accounts {
		open.Write(uint64(i%3), acct(i), u64(initial))
	}
	retry(ctx, t, "open accounts", func(ctx context.Context) error {
		r, err := cl.Exec(ctx, open)
		if err == nil && !r.Committed {
			err = errors.New("not committed")
		}
		return err
	})

	var (
		stop       atomic.Bool
		transfers  atomic.Int64
		cmpFailed  atomic.Int64
		errCount   sync.Map // error text → *atomic.Int64
		lastAcked  [workers]atomic.Uint64
		lastTried  [workers]atomic.Uint64
		wg         sync.WaitGroup
		countError = func(err error) {
			k := err.Error()
			if i := strings.Index(k, ":"); i > 0 {
				k = k[:i]
			}
			v, _ := errCount.LoadOrStore(k, new(atomic.Int64))
			v.(*atomic.Int64).Add(1)
		}
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for n := uint64(1); !stop.Load(); n++ {
				// An acknowledged write of this worker's counter, with a
				// 1 KiB record of it: an entry large enough for the hosts'
				// log segments (replication/doc.go, "Entry bytes in
				// segment files"), which the kills meet mid-write.
				lastTried[w].Store(n)
				octx, ocancel := context.WithTimeout(ctx, 5*time.Second)
				r, err := cl.Exec(octx, client.NewTx().Write(uint64(w%3), counter(w), u64(n)).Write(uint64(w%3), record(w), recordOf(w, n)))
				if err == nil && r.Committed {
					lastAcked[w].Store(n)
				} else if err != nil {
					countError(err)
				}
				// A transfer between accounts on two memnodes.
				a := rng.IntN(accounts)
				b := (a + 1 + rng.IntN(accounts-1)) % accounts
				if a%3 == b%3 {
					b = (b + 1) % accounts
				}
				read := client.NewTx().Read(uint64(a%3), acct(a), 8).Read(uint64(b%3), acct(b), 8)
				rr, err := cl.Exec(octx, read)
				if err != nil {
					countError(err)
					ocancel()
					continue
				}
				va, vb := binary.LittleEndian.Uint64(rr.Reads[0]), binary.LittleEndian.Uint64(rr.Reads[1])
				x := uint64(rng.IntN(10) + 1)
				if va < x {
					ocancel()
					continue
				}
				tx := client.NewTx().
					Compare(uint64(a%3), acct(a), u64(va)).Compare(uint64(b%3), acct(b), u64(vb)).
					Write(uint64(a%3), acct(a), u64(va-x)).Write(uint64(b%3), acct(b), u64(vb+x))
				r, err = cl.Exec(octx, tx)
				ocancel()
				switch {
				case err != nil:
					countError(err)
				case r.Committed:
					transfers.Add(1)
				default:
					cmpFailed.Add(1)
				}
			}
		}()
	}

	// Faults, one at a time. Each is a minority fault, so the cluster must
	// keep committing through it: after injecting it (and after fixing it)
	// the test waits for progress, 20 more committed transfers, and fails if
	// none comes within progressTimeout. The time to progress is logged.
	const progressTimeout = 30 * time.Second
	progress := func(what string) {
		t.Helper()
		start, before := time.Now(), transfers.Load()
		for transfers.Load() < before+20 {
			if time.Since(start) > progressTimeout || ctx.Err() != nil {
				t.Fatalf("%s: only %d transfers committed in %v", what, transfers.Load()-before, progressTimeout)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("  %s: 20 transfers committed within %v", what, time.Since(start).Round(time.Millisecond))
	}
	network := project + "_tutti"
	faults := []struct {
		name        string
		inject, fix func()
	}{
		{"kill host 3 (SIGKILL), restart from its disk",
			func() { sh(t, "docker", "kill", container(2)) }, func() { sh(t, "docker", "start", container(2)) }},
		{"pause host 1 (SIGSTOP)",
			func() { sh(t, "docker", "pause", container(0)) }, func() { sh(t, "docker", "unpause", container(0)) }},
		{"partition host 2 from the others",
			func() { sh(t, "docker", "network", "disconnect", network, container(1)) },
			func() { sh(t, "docker", "network", "connect", "--ip", hostIPs[1], network, container(1)) }},
		{"kill host 1 (SIGKILL), restart from its disk",
			func() { sh(t, "docker", "kill", container(0)) }, func() { sh(t, "docker", "start", container(0)) }},
	}
	progress("before faults")
	for _, f := range faults {
		t.Logf("fault: %s", f.name)
		f.inject()
		progress("during the fault")
		f.fix()
		progress("after the fix")
	}
	stop.Store(true)
	wg.Wait()

	// Every memnode serves again, and the in-doubt transactions of the
	// crashed coordinators' participants are resolved (reads of locked
	// items are retried until recovery decides them).
	var total uint64
	retry(ctx, t, "read all accounts", func(ctx context.Context) error {
		read := client.NewTx()
		for i := range accounts {
			read.Read(uint64(i%3), acct(i), 8)
		}
		r, err := cl.Exec(ctx, read)
		if err != nil {
			return err
		}
		total = 0
		for _, b := range r.Reads {
			total += binary.LittleEndian.Uint64(b)
		}
		return nil
	})
	violations := 0
	if total != accounts*initial {
		violations++
		t.Errorf("bank total %d, want %d", total, accounts*initial)
	}
	lost := 0
	for w := range workers {
		var got uint64
		var rec []byte
		retry(ctx, t, "read counter", func(ctx context.Context) error {
			r, err := cl.Exec(ctx, client.NewTx().Read(uint64(w%3), counter(w), 8).Read(uint64(w%3), record(w), recordBytes))
			if err == nil {
				got, rec = binary.LittleEndian.Uint64(r.Reads[0]), r.Reads[1]
			}
			return err
		})
		if !bytes.Equal(rec, recordOf(w, got)) {
			lost++
			t.Errorf("worker %d: counter %d but its record is not the one written with it", w, got)
		}
		// The last write may have been applied without an answer.
		if acked, tried := lastAcked[w].Load(), lastTried[w].Load(); got < acked || got > tried {
			lost++
			t.Errorf("worker %d: counter %d, acknowledged %d, tried up to %d", w, got, acked, tried)
		}
	}
	var errs []string
	errCount.Range(func(k, v any) bool {
		errs = append(errs, fmt.Sprintf("%s: %d", k, v.(*atomic.Int64).Load()))
		return true
	})
	t.Logf("chaos: %d faults, %d transfers committed, %d refused by compare, errors %v; violations %d, acknowledged writes lost %d",
		len(faults), transfers.Load(), cmpFailed.Load(), errs, violations, lost)
	if transfers.Load() == 0 {
		t.Error("no transfer committed: the workload did not run")
	}
}

func acct(i int) uint64    { return 0x1000 + 8*uint64(i) }
func counter(w int) uint64 { return 0x2000 + 8*uint64(w) }

func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// recordBytes: the size of the record written with each counter.
const recordBytes = 1024

func record(w int) uint64 { return 0x4000 + recordBytes*uint64(w) }

// recordOf is worker w's record for counter value n (all zeros for 0,
// the counter never written).
func recordOf(w int, n uint64) []byte {
	if n == 0 {
		return make([]byte, recordBytes)
	}
	return bytes.Repeat(binary.LittleEndian.AppendUint64(nil, uint64(w)<<56|n), recordBytes/8)
}

// retry runs op until it succeeds or ctx ends (then the test fails).
func retry(ctx context.Context, t *testing.T, what string, op func(context.Context) error) {
	t.Helper()
	for {
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := op(octx)
		cancel()
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
