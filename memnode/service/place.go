package service

import (
	"fmt"
	"sort"
)

// Place spreads memnodes 0..memnodes-1 over hosts: memnode i gets replicas on
// the `replicas` hosts that follow position i in the sorted host list, so
// leaders and load spread evenly. Every host computes the same placement from
// the same inputs.
func Place(hosts []uint64, memnodes, replicas int) ([]MemnodeSpec, error) {
	if len(hosts) == 0 {
		return nil, fmt.Errorf("placement: no hosts")
	}
	if replicas < 1 || replicas > len(hosts) {
		return nil, fmt.Errorf("placement: %d replicas per memnode needs between 1 and %d (the number of hosts)", replicas, len(hosts))
	}
	if memnodes < 1 {
		return nil, fmt.Errorf("placement: need at least one memnode, got %d", memnodes)
	}
	hs := append([]uint64(nil), hosts...)
	sort.Slice(hs, func(i, j int) bool { return hs[i] < hs[j] })
	out := make([]MemnodeSpec, memnodes)
	for i := range out {
		out[i].ID = uint64(i)
		for k := 0; k < replicas; k++ {
			out[i].Replicas = append(out[i].Replicas, hs[(i+k)%len(hs)])
		}
	}
	return out, nil
}
