package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/internal/cluster"
	"github.com/tutti-gcs/tutti/internal/syncbuf"
	"github.com/tutti-gcs/tutti/membership"
	"github.com/tutti-gcs/tutti/memnode"
	"github.com/tutti-gcs/tutti/memnode/service"
	"github.com/tutti-gcs/tutti/replication"
)

// testCA signs certificates for 127.0.0.1 into dir.
type testCA struct {
	t    *testing.T
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T, dir, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{t: t, dir: dir, cert: cert, key: key}
	writePEM(t, filepath.Join(dir, name+"-ca.pem"), "CERTIFICATE", der)
	return ca
}

func (ca *testCA) caFile(name string) string { return filepath.Join(ca.dir, name+"-ca.pem") }

// issue writes name.pem / name-key.pem: a certificate for 127.0.0.1 usable
// by servers and clients.
func (ca *testCA) issue(name string, serial int64) (certFile, keyFile string) {
	return ca.issueWith(name, serial, nil)
}

// issueClient writes a certificate usable by clients only, naming no
// address: an application's.
func (ca *testCA) issueClient(name string, serial int64) (certFile, keyFile string) {
	return ca.issueWith(name, serial, func(c *x509.Certificate) {
		c.ExtKeyUsage, c.IPAddresses = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil
	})
}

func (ca *testCA) issueWith(name string, serial int64, tweak func(*x509.Certificate)) (certFile, keyFile string) {
	t := ca.t
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	if tweak != nil {
		tweak(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = filepath.Join(ca.dir, name+".pem")
	keyFile = filepath.Join(ca.dir, name+"-key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", kder)
	return certFile, keyFile
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestMutualTLS: hosts started with --tls-* credentials serve clients that
// present a certificate of the same CA, talk Raft to each other over TLS,
// and refuse with a clear error a client without TLS, a client whose
// certificate another CA signed, and a client that does not trust the
// servers' CA. Incomplete or unreadable TLS flags are refused before
// anything is contacted.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	good := newTestCA(t, dir, "good")
	hostCert, hostKey := good.issue("host", 2)
	cliCert, cliKey := good.issue("client", 3)
	rogue := newTestCA(t, dir, "rogue")
	rogueCert, rogueKey := rogue.issue("intruder", 4)

	hostFlags := tlsFlags{cert: hostCert, key: hostKey, ca: good.caFile("good")}
	tm, err := hostFlags.load()
	if err != nil {
		t.Fatal(err)
	}
	var serverLog syncbuf.Buffer
	c, err := cluster.Start(cluster.Config{
		NoSync: true, DataDir: t.TempDir(),
		ServerOptions: tm.serverOptions(zerolog.New(&serverLog)), DialOptions: tm.dialOptions(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Leaders need Raft traffic between the hosts, which is TLS too.
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	// The directory is bootstrapped through a client of the hosts' own.
	if err := c.WaitDirectory(ctx, 1); err != nil {
		t.Fatal(err)
	}
	seed := "--seed=" + c.Seeds()[0]
	tlsArgs := func(cert, key, ca string) []string {
		return []string{"--tls-cert=" + cert, "--tls-key=" + key, "--tls-ca=" + ca}
	}

	args := append([]string{"mtx", seed, "--write", "1:0x10=secret"}, tlsArgs(cliCert, cliKey, good.caFile("good"))...)
	if out, err := run(t, args...); err != nil || !strings.Contains(out, "committed") {
		t.Fatalf("mtx with the cluster's CA: %q %v", out, err)
	}
	args = append([]string{"memnodes", seed}, tlsArgs(cliCert, cliKey, good.caFile("good"))...)
	if out, err := run(t, args...); err != nil || !strings.Contains(out, "memnode") {
		t.Fatalf("memnodes over TLS: %q %v", out, err)
	}

	args = append([]string{"send", "lobby", "over TLS", seed, "--id", "alice", "--log-level", "warn"}, tlsArgs(cliCert, cliKey, good.caFile("good"))...)
	if out, err := run(t, args...); err != nil {
		t.Fatalf("send over TLS: %q %v", out, err)
	}
	if out, err := run(t, "send", "lobby", "plain", seed, "--timeout=5s", "--log-level", "warn"); err == nil || !strings.Contains(err.Error(), "may require mutual TLS") {
		t.Errorf("send without TLS: want the TLS hint, got %q %v", out, err)
	}

	refused := []struct {
		name string
		args []string
		want string
	}{
		{"no TLS", nil, "the server may require mutual TLS"},
		{"certificate of another CA", tlsArgs(rogueCert, rogueKey, good.caFile("good")), "refused this process's certificate"},
		{"server not trusted", tlsArgs(rogueCert, rogueKey, rogue.caFile("rogue")), "certificate signed by unknown authority"},
	}
	for _, tc := range refused {
		args := append([]string{"mtx", seed, "--timeout=5s", "--write", "1:0x10=evil"}, tc.args...)
		out, err := run(t, args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: want an error containing %q, got %q %v", tc.name, tc.want, out, err)
		}
		t.Logf("%s: %v", tc.name, err)
	}
	// The hosts said whom they turned away.
	if l := serverLog.String(); !strings.Contains(l, "refused a connection: TLS handshake failed") {
		t.Errorf("no refused handshake in the hosts' log: %q", l)
	}
	// The refused writes changed nothing.
	args = append([]string{"mtx", seed, "--read", "1:0x10:6"}, tlsArgs(cliCert, cliKey, good.caFile("good"))...)
	if out, err := run(t, args...); err != nil || !strings.Contains(out, "secret") {
		t.Fatalf("read back: %q %v", out, err)
	}

	bad := []struct {
		name string
		args []string
		want string
	}{
		{"cert without key and CA", []string{"--tls-cert=" + cliCert}, "missing [--tls-key --tls-ca]"},
		{"key of another cert", tlsArgs(cliCert, rogueKey, good.caFile("good")), "private key does not match"},
		{"CA file without PEM", tlsArgs(cliCert, cliKey, cliKey), "no PEM certificate"},
		{"missing CA file", tlsArgs(cliCert, cliKey, filepath.Join(dir, "nope.pem")), "no such file"},
	}
	for _, tc := range bad {
		args := append([]string{"mtx", seed, "--write", "1:0x10=evil"}, tc.args...)
		out, err := run(t, args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: want an error containing %q, got %q %v", tc.name, tc.want, out, err)
		}
	}
}

// TestRaftRefusesClientCertificates: with mutual TLS any certificate of the
// cluster's CA passes the handshake, an application's included, and Raft
// streams took whatever host id a frame claimed. A host now takes Raft
// traffic only over a certificate usable by a server and valid for the
// name its dialers verify the claimed host for (authorizeRaftPeer); the
// hosts' own certificates still carry the cluster.
func TestRaftRefusesClientCertificates(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, dir, "good")
	hostCert, hostKey := ca.issue("host", 2)
	appCert, appKey := ca.issueClient("app", 3)
	tm, err := (&tlsFlags{cert: hostCert, key: hostKey, ca: ca.caFile("good")}).load()
	if err != nil {
		t.Fatal(err)
	}
	c, err := cluster.Start(cluster.Config{
		NoSync: true, DataDir: t.TempDir(),
		ServerOptions: tm.serverOptions(), DialOptions: tm.dialOptions(), AuthorizeRaftPeer: tm.authorizeRaftPeer(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil { // Raft between the hosts works
		t.Fatal(err)
	}
	// A frame from "host 2" to host 1, for a group nobody has.
	frame := func(certFile, keyFile string) error {
		am, err := (&tlsFlags{cert: certFile, key: keyFile, ca: ca.caFile("good")}).load()
		if err != nil {
			t.Fatal(err)
		}
		cc, err := grpc.NewClient(c.Seeds()[0], am.dialOptions()...)
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		s, err := tuttipb.NewRaftClient(cc).Stream(ctx)
		if err != nil {
			return err
		}
		m, err := proto.Marshal(&raftpb.Message{Type: raftpb.MessageType_MsgHeartbeat.Enum(), From: proto.Uint64(2), To: proto.Uint64(1)})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&tuttipb.RaftBatch{From: 2, To: 1, Messages: []*tuttipb.GroupMessage{{Group: 1 << 40, Message: m}}}); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		_, err = s.CloseAndRecv()
		return err
	}
	if err := frame(appCert, appKey); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "not a server certificate") {
		t.Fatalf("Raft frame over an application's certificate: %v; want PermissionDenied, not a server certificate", err)
	}
	if err := frame(hostCert, hostKey); err != nil {
		t.Fatalf("Raft frame over a host's certificate: %v", err)
	}
}

// A host joining a mutual-TLS cluster without the --tls-* flags cannot
// read the directory (its dials fail the handshake), so its membership
// agent waits for "memnode 0" forever. It used to say only that, at info
// level; the server now says at warn level that the other hosts refuse it
// and names the TLS flags.
func TestJoinWithoutTLSSaysSo(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, dir, "good")
	hostCert, hostKey := ca.issue("host", 2)
	hostFlags := tlsFlags{cert: hostCert, key: hostKey, ca: ca.caFile("good")}
	tm, err := hostFlags.load()
	if err != nil {
		t.Fatal(err)
	}
	c := testClusterWith(t, cluster.Config{Memnodes: 1,
		ServerOptions: tm.serverOptions(zerolog.Nop()), DialOptions: tm.dialOptions(), AuthorizeRaftPeer: tm.authorizeRaftPeer()})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitDirectory(ctx, 1); err != nil {
		t.Fatal(err)
	}

	// Host 4 joins empty and without TLS, as 'tutti server --join' would.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hosts := map[uint64]string{4: lis.Addr().String()}
	for i, s := range c.Seeds() {
		hosts[uint64(i+1)] = s
	}
	h, err := service.StartHost(service.HostConfig{ID: 4, Listener: lis, Hosts: hosts, DataDir: t.TempDir(),
		Memnode: memnode.DefaultConfig(), Replication: replication.Config{NoSync: true}, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	buf := &syncbuf.Buffer{}
	a := startServerAgent(zerolog.New(buf).Level(zerolog.InfoLevel), membership.Config{ID: "host-4", Bind: "127.0.0.1:0"},
		nil, hosts[4], hosts, 0, nil)
	defer a.stop()
	err = cluster.Eventually(ctx, "a warning that names the TLS flags", func() error {
		for _, l := range logLines(t, buf.String()) {
			if (l["level"] == "warn" || l["level"] == "error") && strings.Contains(fmt.Sprint(l), "--tls-cert") {
				t.Logf("%s: %s (%s)", l["level"], l["message"], l["error"])
				return nil
			}
		}
		return errors.New("none yet")
	})
	if err != nil {
		t.Fatalf("%v; the log:\n%s", err, buf)
	}
}
