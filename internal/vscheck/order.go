package vscheck

import (
	"fmt"
	"slices"
	"strings"
)

// checkTotalOrder checks that one total order of all delivered messages is
// consistent with every member's delivery order.
//
// Each member contributes the edges x→y for consecutive (first) deliveries x,
// y in its local order; the union of these chains is the precedence graph,
// with one node per delivered message. Some total order agrees with every
// member iff the graph is acyclic, which Kahn's algorithm decides in
// O(V+E). If it is not, each strongly connected component with more than one
// node (Tarjan, iterative) is reported once, with a shortest cycle through one
// of its nodes as the witness; every edge of the cycle names the member that
// delivered its two messages in that order.
func (c *checker) checkTotalOrder() {
	n := len(c.msgs)
	// Edges packed as from<<32 | to, sorted and deduplicated.
	edges := make([]uint64, 0, len(c.delivs))
	for mi := range c.members {
		m := &c.members[mi]
		ds := c.delivs[m.dlo:m.dhi]
		for i := 1; i < len(ds); i++ {
			edges = append(edges, uint64(ds[i-1].msg)<<32|uint64(ds[i].msg))
		}
	}
	slices.Sort(edges)
	edges = slices.Compact(edges)

	// Compressed adjacency: the edges of v are adj[off[v]:off[v+1]].
	off := make([]int32, n+1)
	for _, e := range edges {
		off[e>>32+1]++
	}
	for i := 1; i <= n; i++ {
		off[i] += off[i-1]
	}
	adj := make([]int32, len(edges))
	indeg := make([]int32, n)
	for i, e := range edges { // sorted by from: position i is in from's range
		adj[i] = int32(uint32(e))
		indeg[adj[i]]++
	}

	// Kahn: remove nodes that cannot be on a cycle.
	removed := make([]bool, n)
	queue := make([]int32, 0, n)
	for v := range n {
		if indeg[v] == 0 {
			queue = append(queue, int32(v))
		}
	}
	for len(queue) > 0 {
		v := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		removed[v] = true
		for i := off[v]; i < off[v+1]; i++ {
			w := adj[i]
			if indeg[w]--; indeg[w] == 0 {
				queue = append(queue, w)
			}
		}
	}
	left := 0
	for _, r := range removed {
		if !r {
			left++
		}
	}
	if left == 0 {
		return
	}

	// Tarjan's SCC over the remaining nodes, iteratively.
	index := make([]int32, n) // 0: unvisited, else DFS number+1
	low := make([]int32, n)
	onStack := make([]bool, n)
	comp := make([]int32, n) // SCC id+1 for nodes in reported components
	var stack []int32
	type frame struct{ v, next int32 }
	var calls []frame
	var counter, comps int32
	for s := range n {
		if removed[s] || index[s] != 0 {
			continue
		}
		counter++
		index[s], low[s] = counter, counter
		stack = append(stack, int32(s))
		onStack[s] = true
		calls = append(calls, frame{int32(s), off[s]})
		for len(calls) > 0 {
			f := &calls[len(calls)-1]
			v := f.v
			if f.next < off[v+1] {
				w := adj[f.next]
				f.next++
				if removed[w] {
					continue
				}
				if index[w] == 0 {
					counter++
					index[w], low[w] = counter, counter
					stack = append(stack, w)
					onStack[w] = true
					calls = append(calls, frame{w, off[w]})
				} else if onStack[w] {
					low[v] = min(low[v], index[w])
				}
				continue
			}
			calls = calls[:len(calls)-1]
			if len(calls) > 0 {
				p := calls[len(calls)-1].v
				low[p] = min(low[p], low[v])
			}
			if low[v] != index[v] {
				continue
			}
			k := len(stack) - 1
			for stack[k] != v {
				k--
			}
			scc := stack[k:]
			stack = stack[:k]
			for _, w := range scc {
				onStack[w] = false
			}
			if len(scc) < 2 {
				continue
			}
			comps++
			for _, w := range scc {
				comp[w] = comps
			}
			c.reportCycle(scc, comp, comps, off, adj)
		}
	}
}

// reportCycle reports a shortest cycle through the smallest node of scc,
// found by breadth-first search inside the component.
func (c *checker) reportCycle(scc []int32, comp []int32, id int32, off, adj []int32) {
	if len(c.out[TotalOrder]) >= maxPerProperty {
		c.over[TotalOrder]++
		return
	}
	root := slices.Min(scc)
	parent := map[int32]int32{} // node -> edge index that reached it
	queue := []int32{root}
	var closing int32 = -1
	for len(queue) > 0 && closing < 0 {
		v := queue[0]
		queue = queue[1:]
		for i := off[v]; i < off[v+1]; i++ {
			w := adj[i]
			if comp[w] != id {
				continue
			}
			if w == root {
				closing = i
				break
			}
			if _, seen := parent[w]; !seen {
				parent[w] = i
				queue = append(queue, w)
			}
		}
	}
	// Walk back from the closing edge to root.
	var path []int32 // edge indices, reversed
	src := func(e int32) int32 {
		// The edge's source is the node whose adjacency range holds e.
		lo, hi := 0, len(off)-1
		for lo+1 < hi {
			mid := (lo + hi) / 2
			if off[mid] <= e {
				lo = mid
			} else {
				hi = mid
			}
		}
		return int32(lo)
	}
	for e := closing; ; {
		path = append(path, e)
		u := src(e)
		if u == root {
			break
		}
		e = parent[u]
	}
	slices.Reverse(path)
	steps := make([]string, 0, len(path))
	for _, e := range path[:min(len(path), 8)] {
		steps = append(steps, fmt.Sprintf("%s delivered %s before %s", c.edgeBy(src(e), adj[e]), c.m(src(e)), c.m(adj[e])))
	}
	more := ""
	if len(path) > 8 {
		more = fmt.Sprintf("; ... (%d more steps)", len(path)-8)
	}
	c.report(TotalOrder, "no single order of %d messages agrees with all members: %s%s", len(scc), strings.Join(steps, "; "), more)
}

// edgeBy names the first member (by name) that delivered y right after x.
func (c *checker) edgeBy(x, y int32) string {
	for mi := range c.members {
		m := &c.members[mi]
		ds := c.delivs[m.dlo:m.dhi]
		for i := 1; i < len(ds); i++ {
			if ds[i-1].msg == x && ds[i].msg == y {
				return m.name
			}
		}
	}
	return "?"
}
