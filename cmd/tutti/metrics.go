package main

import (
	"fmt"

	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/internal/metrics"
	"github.com/tutti-gcs/tutti/memnode/service"
)

// metricsServe serves the hosts' metrics at addr/metrics.
func metricsServe(addr string, log zerolog.Logger, hosts ...*service.Host) (*metrics.Server, error) {
	s, err := metrics.Serve(addr, metrics.Registry(hosts...), log)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	return s, nil
}
