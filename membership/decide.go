package membership

import (
	"time"
)

// Seen is what the local memberlist says about a process.
type Seen uint8

// Observed states. A process memberlist never mentioned (or forgot) is
// simply missing from View.
const (
	SeenAlive Seen = iota + 1
	SeenDead       // memberlist declared it dead (failed probes and suspicion)
	SeenLeft       // it left memberlist gracefully
)

// Observation is the local memberlist's latest word on one process.
type Observation struct {
	Seen Seen
	// Incarnation from the process's gossip metadata (0 if unknown).
	Incarnation uint64
	// Tentative: Incarnation is only the one the process meant to register
	// (Meta.Tentative): it is newer than every lower incarnation, but the
	// row registered under it may be another life's.
	Tentative bool
	// Since is when this observer saw the state begin (its own clock).
	Since time.Time
}

// Input is everything the decision function looks at. It is a value: the
// driver gathers it, Decide computes, the driver executes.
type Input struct {
	// Self is this process: its id, its registered incarnation (0 before
	// registering) and the addresses it advertises.
	Self Row
	// Leaving is set once Leave started: no more self-repair.
	Leaving bool
	// Table is the process table as last read.
	Table Table
	// View is the local memberlist view by process id.
	View map[string]Observation
	// RowSeen is when this observer first saw each live row's current
	// incarnation (by id). Missing entries count as Epoch.
	RowSeen map[string]time.Time
	// Epoch is when this process's current incarnation was registered:
	// evidence older than Epoch counts as Epoch, so a process that was
	// itself evicted does not act on what it saw while cut off.
	Epoch time.Time
	Now   time.Time
	// Timing carries TakeoverTimeout, AbsentTimeout and IsolationDelay.
	Timing Timing
}

// Action is what Decide asks the driver to do.
type Action uint8

// Actions.
const (
	ActNone       Action = iota
	ActRegister          // first registration of this process
	ActRejoin            // this process was declared dead: register a new incarnation
	ActMarkDead          // declare another process dead
	ActMarkLeft          // record another process's graceful leave
	ActSuperseded        // a newer incarnation of this id exists: stop, do not fight it
)

func (a Action) String() string {
	return [...]string{"none", "register", "rejoin", "mark-dead", "mark-left", "superseded"}[a]
}

// Decision is Decide's output.
type Decision struct {
	Action Action
	// Plan is the table change to run (Register, Rejoin, MarkDead,
	// MarkLeft).
	Plan Plan
	// Next, if not zero, is when Decide may decide differently with the
	// same inputs (a takeover or absence timeout falls due).
	Next time.Time
}

// Decide is the membership protocol's core: deterministic, no I/O, no clock.
//
// Self first: an unregistered process registers; a registered process whose
// row no longer shows its incarnation alive was declared dead (false
// suspicion, pause, partition) and rejoins with incarnation
// MaxIncarnation+1, unless a newer incarnation of its id exists (then it is
// a zombie and must stop).
//
// Then other processes. A live row R is gone when the view says R's id is
// dead or left with an incarnation >= R's (evidence at once; an equal one
// only if not tentative: a life that died before registering advertised
// the incarnation that the next life of its id then registered), or when
// the view does not show R alive at all — missing, or dead with an older
// (or equal tentative) incarnation — for AbsentTimeout. The deciders are
// the live rows not gone, ranked by incarnation (oldest first); the one at
// position p acts on a gone row at evidence + p×TakeoverTimeout (position
// 0, the lowest-ranked, at once). When more than half of the other live
// rows look gone, the observer is more likely cut off than they are dead,
// and waits IsolationDelay more: a majority that sees it gone evicts it
// first. Concurrent deciders are safe: every plan compares the table
// version.
func Decide(in Input) Decision {
	t := in.Table
	self, registered := Row{}, in.Self.Incarnation != 0
	if registered {
		var ok bool
		self, ok = t.Lookup(in.Self.ID)
		switch {
		case ok && self.Incarnation > in.Self.Incarnation:
			return Decision{Action: ActSuperseded}
		case in.Leaving:
			return Decision{}
		case !ok || self.Incarnation != in.Self.Incarnation || !self.State.Live():
			p, ok := planJoin(t, in.Self, in.Now)
			if !ok {
				return Decision{Action: ActRejoin, Next: in.Now.Add(in.Timing.AbsentTimeout)}
			}
			return Decision{Action: ActRejoin, Plan: p}
		}
	} else {
		if in.Leaving {
			return Decision{}
		}
		p, ok := planJoin(t, in.Self, in.Now)
		if !ok {
			return Decision{Action: ActRegister, Next: in.Now.Add(in.Timing.AbsentTimeout)}
		}
		return Decision{Action: ActRegister, Plan: p}
	}

	live := t.Live()
	type victim struct {
		row      Row
		state    State
		evidence time.Time
	}
	var gone []victim
	var deciders []Row
	others := 0
	for _, r := range live {
		if r.ID == in.Self.ID {
			deciders = append(deciders, r)
			continue
		}
		others++
		ev := in.Epoch
		if s, ok := in.RowSeen[r.ID]; ok && s.After(ev) {
			ev = s
		}
		o, ok := in.View[r.ID]
		switch {
		case ok && o.Seen == SeenAlive:
			deciders = append(deciders, r)
			continue
		case ok && (o.Incarnation > r.Incarnation || o.Incarnation == r.Incarnation && !o.Tentative):
			st := StateDead
			if o.Seen == SeenLeft {
				st = StateLeft
			}
			gone = append(gone, victim{r, st, later(o.Since, in.Epoch)})
		default:
			if ok {
				ev = later(ev, o.Since)
			}
			gone = append(gone, victim{r, StateDead, ev.Add(in.Timing.AbsentTimeout)})
		}
	}
	if len(gone) == 0 {
		return Decision{}
	}
	pos := 0
	for i, r := range deciders {
		if r.ID == in.Self.ID {
			pos = i
		}
	}
	delay := time.Duration(pos) * in.Timing.TakeoverTimeout
	if 2*len(gone) > others {
		delay += in.Timing.IsolationDelay
	}
	var best *victim
	var bestDue time.Time
	for i := range gone {
		due := gone[i].evidence.Add(delay)
		if best == nil || due.Before(bestDue) || (due.Equal(bestDue) && gone[i].row.Slot < best.row.Slot) {
			best, bestDue = &gone[i], due
		}
	}
	if bestDue.After(in.Now) {
		return Decision{Next: bestDue}
	}
	nr := best.row
	nr.State, nr.Since, nr.By = best.state, in.Now, self.Incarnation
	act := ActMarkDead
	if best.state == StateLeft {
		act = ActMarkLeft
	}
	return Decision{Action: act, Plan: Plan{Base: t, Old: best.row, New: nr}}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// planJoin registers self with incarnation MaxIncarnation+1 in its own row,
// else the first empty slot, else the longest-dead row. ok is false when
// the table is full of live processes.
func planJoin(t Table, self Row, now time.Time) (Plan, bool) {
	slot := -1
	if r, ok := t.Lookup(self.ID); ok {
		slot = r.Slot
	} else {
		used := make(map[int]bool, len(t.Rows))
		for _, r := range t.Rows {
			used[r.Slot] = true
		}
		for s := 0; s < t.cfg.MaxRows; s++ {
			if !used[s] {
				slot = s
				break
			}
		}
		if slot < 0 {
			var oldest *Row
			for i := range t.Rows {
				r := &t.Rows[i]
				if !r.State.Live() && (oldest == nil || r.Since.Before(oldest.Since)) {
					oldest = r
				}
			}
			if oldest == nil {
				return Plan{}, false
			}
			slot = oldest.Slot
		}
	}
	inc := t.MaxIncarnation + 1
	nr := Row{Slot: slot, ID: self.ID, Incarnation: inc, State: StateAlive, Since: now, By: inc,
		GRPCAddr: self.GRPCAddr, GossipAddr: self.GossipAddr}
	return Plan{Base: t, Old: t.slotRow(slot), New: nr}, true
}

// planLeave marks self left. ok is false if self's row no longer shows its
// incarnation live (it was declared dead already).
func planLeave(t Table, self Row, now time.Time) (Plan, bool) {
	r, ok := t.Lookup(self.ID)
	if !ok || r.Incarnation != self.Incarnation || !r.State.Live() {
		return Plan{}, false
	}
	nr := r
	nr.State, nr.Since, nr.By = StateLeft, now, self.Incarnation
	return Plan{Base: t, Old: r, New: nr}, true
}
