package service

import "testing"

// A leader that must leave hands leadership to a voter that stays. It
// used to take the furthest caught-up healthy voter, which during a move
// of two replicas at once could be the other one leaving: that voter,
// leader next, had to hand leadership on again before it could go.
func TestTransferTargetPrefersVotersThatStay(t *testing.T) {
	match := map[uint64]uint64{2: 100, 3: 90, 4: 95, 5: 99}
	up := map[uint64]bool{2: true, 3: true, 4: true, 5: true}
	healthy := func(id uint64) bool { return up[id] }
	m := func(id uint64) uint64 { return match[id] }
	cases := []struct {
		name       string
		rest, want []uint64
		down       []uint64
		to         uint64
	}{
		{"a staying voter, though one leaving is further", []uint64{2, 3, 4}, []uint64{3, 4}, nil, 4},
		{"the furthest of those staying", []uint64{2, 3, 4, 5}, []uint64{3, 4, 5}, nil, 5},
		{"only healthy ones", []uint64{2, 3, 4}, []uint64{3, 4}, []uint64{4}, 3},
		{"a leaving one when none that stays is healthy", []uint64{2, 3}, []uint64{3}, []uint64{3}, 2},
		{"none", []uint64{2}, nil, []uint64{2}, 0},
	}
	for _, c := range cases {
		for _, d := range c.down {
			up[d] = false
		}
		if got := transferTarget(c.rest, c.want, healthy, m); got != c.to {
			t.Errorf("%s: transfer to %d, want %d", c.name, got, c.to)
		}
		for _, d := range c.down {
			up[d] = true
		}
	}
}
