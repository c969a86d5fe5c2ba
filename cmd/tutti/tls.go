package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// tlsFlags are the mutual-TLS settings shared by every command: servers
// present --tls-cert and accept only peers whose certificate --tls-ca
// signed; clients (and hosts dialing each other) present the same kind of
// certificate and verify the server against --tls-ca. All three or none.
type tlsFlags struct {
	cert, key, ca string
	serverName    string
}

func (t *tlsFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&t.cert, "tls-cert", os.Getenv("TUTTI_TLS_CERT"),
		"PEM certificate this process presents (mutual TLS; with --tls-key and --tls-ca) (env TUTTI_TLS_CERT)")
	fs.StringVar(&t.key, "tls-key", os.Getenv("TUTTI_TLS_KEY"),
		"PEM private key of --tls-cert (env TUTTI_TLS_KEY)")
	fs.StringVar(&t.ca, "tls-ca", os.Getenv("TUTTI_TLS_CA"),
		"PEM CA bundle: peers must present a certificate it signed, and servers are verified against it (env TUTTI_TLS_CA)")
	fs.StringVar(&t.serverName, "tls-server-name", os.Getenv("TUTTI_TLS_SERVER_NAME"),
		"name to verify in servers' certificates instead of the host part of the address dialed (env TUTTI_TLS_SERVER_NAME)")
}

func (t *tlsFlags) enabled() bool { return t.cert != "" || t.key != "" || t.ca != "" }

// load reads the files. It returns nil, nil when TLS is not configured.
func (t *tlsFlags) load() (*tlsMaterial, error) {
	if !t.enabled() {
		if t.serverName != "" {
			return nil, errors.New("--tls-server-name needs --tls-cert, --tls-key and --tls-ca")
		}
		return nil, nil
	}
	var missing []string
	for _, f := range []struct{ name, v string }{{"--tls-cert", t.cert}, {"--tls-key", t.key}, {"--tls-ca", t.ca}} {
		if f.v == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("mutual TLS needs --tls-cert, --tls-key and --tls-ca together; missing %v", missing)
	}
	pair, err := tls.LoadX509KeyPair(t.cert, t.key)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert %s / --tls-key %s: %w", t.cert, t.key, err)
	}
	caPEM, err := os.ReadFile(t.ca)
	if err != nil {
		return nil, fmt.Errorf("--tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", t.ca)
	}
	return &tlsMaterial{pair: pair, pool: pool, serverName: t.serverName}, nil
}

type tlsMaterial struct {
	pair       tls.Certificate
	pool       *x509.CertPool
	serverName string
}

// serverOptions: require and verify a client certificate signed by the CA.
// Refused handshakes are logged (at most 5 a minute) with the peer and the
// reason, so an operator sees who was turned away and why.
func (m *tlsMaterial) serverOptions(log ...zerolog.Logger) []grpc.ServerOption {
	if m == nil {
		return nil
	}
	var c credentials.TransportCredentials = credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{m.pair},
		ClientCAs:    m.pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	})
	if len(log) > 0 {
		l := log[0].Sample(&zerolog.BurstSampler{Burst: 5, Period: time.Minute})
		c = &loggedCreds{TransportCredentials: c, log: l}
	}
	return []grpc.ServerOption{grpc.Creds(c)}
}

// loggedCreds logs failed server handshakes.
type loggedCreds struct {
	credentials.TransportCredentials
	log zerolog.Logger
}

func (c *loggedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		c.log.Warn().Err(err).Str("peer", raw.RemoteAddr().String()).Msg("refused a connection: TLS handshake failed")
	}
	return conn, info, err
}

func (c *loggedCreds) Clone() credentials.TransportCredentials {
	return &loggedCreds{TransportCredentials: c.TransportCredentials.Clone(), log: c.log}
}

// explainConnErr adds what the usual cause is to a client's failure to
// reach any seed when it looks like a TLS mismatch: gRPC reports a plaintext
// client refused by a TLS server as a missing server preface, and a
// certificate the server refused (TLS 1.3 checks it after the client's
// side of the handshake) as a broken connection, or as "certificate
// required" when the client had no certificate of a CA the server named.
func explainConnErr(err error, tlsOn bool) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	switch {
	case !tlsOn && strings.Contains(msg, "server preface"):
		return fmt.Errorf("%w (the server may require mutual TLS: give --tls-cert, --tls-key and --tls-ca)", err)
	case tlsOn && strings.Contains(msg, "first record does not look like a TLS handshake"):
		return fmt.Errorf("%w (the server does not speak TLS: drop the --tls-* flags or start it with them)", err)
	case tlsOn && (strings.Contains(msg, "broken pipe") || strings.Contains(msg, "connection reset") ||
		strings.Contains(msg, "bad certificate") || strings.Contains(msg, "unknown certificate authority") ||
		strings.Contains(msg, "certificate required") ||
		strings.Contains(msg, "EOF")):
		return fmt.Errorf("%w (the server probably refused this process's certificate: is --tls-cert signed by the cluster's CA?)", err)
	}
	return err
}

// authorizeRaftPeer ties a Raft stream's certificate to the host id it
// claims (nil without TLS): the certificate the peer presented (already
// verified against the CA by the handshake) must be usable by a server
// (extended key usage ServerAuth, or none) and valid for the name this
// host's dialers verify that host's certificate for: --tls-server-name if
// set, else the host part of the host's address. So a client's certificate
// of the cluster's CA cannot speak Raft, and with per-host certificates
// one host cannot speak for another.
func (m *tlsMaterial) authorizeRaftPeer() func(ctx context.Context, host uint64, addr string) error {
	if m == nil {
		return nil
	}
	return func(ctx context.Context, host uint64, addr string) error {
		p, ok := peer.FromContext(ctx)
		if !ok {
			return errors.New("no peer information")
		}
		info, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok || len(info.State.PeerCertificates) == 0 {
			return errors.New("no TLS client certificate")
		}
		cert := info.State.PeerCertificates[0]
		if len(cert.ExtKeyUsage) > 0 && !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) &&
			!slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageAny) {
			return fmt.Errorf("certificate %q is not a server certificate (no ServerAuth usage)", cert.Subject.CommonName)
		}
		name := m.serverName
		if name == "" {
			h, _, err := net.SplitHostPort(addr)
			if err != nil {
				return fmt.Errorf("host %d's address %q: %w", host, addr, err)
			}
			name = h
		}
		if err := cert.VerifyHostname(name); err != nil {
			return fmt.Errorf("certificate %q is not valid for host %d (%s): %w", cert.Subject.CommonName, host, name, err)
		}
		return nil
	}
}

// dialOptions: present the certificate, verify the server against the CA.
// Nil without TLS (every dialer then uses insecure credentials).
func (m *tlsMaterial) dialOptions() []grpc.DialOption {
	if m == nil {
		return nil
	}
	return []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{m.pair},
		RootCAs:      m.pool,
		ServerName:   m.serverName,
		MinVersion:   tls.VersionTLS12,
	}))}
}

// loadDial loads the flags for a client command: its dial options, nil
// without TLS.
func (t *tlsFlags) loadDial() ([]grpc.DialOption, error) {
	m, err := t.load()
	if err != nil {
		return nil, err
	}
	return m.dialOptions(), nil
}
