package main

import (
	"errors"
	"fmt"

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

// metricsServe serves the hosts' metrics at addr/metrics and the status
// page (read through seeds, with dial) at addr/status.
func metricsServe(addr string, log zerolog.Logger, seeds []string, dial []grpc.DialOption, hosts ...*service.Host) (*httpPages, error) {
	st := newStatusPage(seeds, dial, log)
	s, err := metrics.Serve(addr, metrics.Registry(hosts...), log, metrics.Route{Pattern: "/status", Handler: st})
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	return &httpPages{Server: s, status: st}, nil
}

// Close stops serving, then closes the status page's client.
func (p *httpPages) Close() error { return errors.Join(p.Server.Close(), p.status.Close()) }
