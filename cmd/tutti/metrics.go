package main

import (
	"errors"
	"fmt"
	"net"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"

	"github.com/tutti-gcs/tutti/internal/metrics"
	"github.com/tutti-gcs/tutti/memnode/service"
)

// httpPages is the HTTP server of --metrics-addr: the hosts' metrics at
// /metrics and the cluster's status page at /status.
type httpPages struct {
	*metrics.Server
	status *statusPage
}

// metricsListen listens on --metrics-addr addr, before anything else
// starts, so an unusable address fails the command while it has changed
// nothing; nil if addr is empty (no metrics).
func metricsListen(addr string) (net.Listener, error) {
	if addr == "" {
		return nil, nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	return lis, nil
}

// metricsServe serves the hosts' metrics at lis/metrics and the status
// page (read through seeds, with dial) at lis/status.
func metricsServe(lis net.Listener, log zerolog.Logger, seeds []string, dial []grpc.DialOption, hosts ...*service.Host) *httpPages {
	st := newStatusPage(seeds, dial, log)
	s := metrics.ServeListener(lis, metrics.Registry(hosts...), log, metrics.Route{Pattern: "/status", Handler: st})
	return &httpPages{Server: s, status: st}
}

// Close stops serving, then closes the status page's client.
func (p *httpPages) Close() error { return errors.Join(p.Server.Close(), p.status.Close()) }
