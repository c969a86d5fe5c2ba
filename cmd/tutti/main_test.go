package main

import (
	"io"
	"net"
	"os"
	"strings"
	"testing"
)

// Environment of a test binary that stands in for tutti (TestMain).
const (
	// envRunTutti: run the arguments as the tutti command instead of the
	// tests, so a test can give a benchmark this binary for the processes
	// it spawns, without building tutti.
	envRunTutti = "TUTTI_TEST_RUN_TUTTI"
	// envTakeGossipPort: such a process first binds the port of its
	// --gossip-addr (UDP and TCP) and holds it, as any socket can between
	// the moment a parent found the port free and the moment its child
	// binds it.
	envTakeGossipPort = "TUTTI_TEST_TAKE_GOSSIP_PORT"
)

func TestMain(m *testing.M) {
	if os.Getenv(envRunTutti) != "" {
		if os.Getenv(envTakeGossipPort) != "" {
			takeGossipPort(os.Args[1:])
		}
		main() // exits unless the command succeeded
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// heldPorts keeps takeGossipPort's sockets open for the life of the
// process.
var heldPorts []io.Closer

// takeGossipPort binds the port of --gossip-addr in args, if it is not 0.
func takeGossipPort(args []string) {
	var addr string
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--gossip-addr="); ok {
			addr = v
		} else if a == "--gossip-addr" && i+1 < len(args) {
			addr = args[i+1]
		}
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "0" {
		return
	}
	if u, err := net.ListenPacket("udp", addr); err == nil {
		heldPorts = append(heldPorts, u)
	}
	if l, err := net.Listen("tcp", addr); err == nil {
		heldPorts = append(heldPorts, l)
	}
}

// standInForTutti makes the processes this test starts from its own binary
// (os.Executable) run tutti, and returns that binary.
func standInForTutti(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(envRunTutti, "1")
	return exe
}
