package gcs

import "errors"

// Errors returned by gcs. Test with errors.Is.
var (
	// ErrInvalid: bad configuration or argument.
	ErrInvalid = errors.New("gcs: invalid argument")
	// ErrNotMember: the group was left (or never joined); nothing is
	// ordered.
	ErrNotMember = errors.New("gcs: not a member")
	// ErrEvicted: this member was removed from the view while alive (a
	// confirmed failure, Remove, or it fell behind the log); it may Join
	// again as a new member.
	ErrEvicted = errors.New("gcs: evicted from the group")
	// ErrClosed: the Node was closed.
	ErrClosed = errors.New("gcs: closed")
	// ErrGroupFull: every member slot of the group is taken, or the
	// group's order log is too small for a view of one more member (see
	// Config.LogCapacity).
	ErrGroupFull = errors.New("gcs: group full")
	// ErrIndexFull: the home memnode's group index has no free slot near
	// the name's hash.
	ErrIndexFull = errors.New("gcs: group index full")
	// ErrNoGroup: no group of that name exists (Describe, Delete; Join
	// creates groups).
	ErrNoGroup = errors.New("gcs: no such group")
	// ErrNotEmpty: Delete of a group that has members, or members whose
	// slot and queue are not reclaimed yet.
	ErrNotEmpty = errors.New("gcs: group not empty")
	// ErrTooLarge: a message does not fit a batch or the member's queue.
	ErrTooLarge = errors.New("gcs: message too large")
	// ErrStateTransfer: the provider could not produce, or the joiner
	// could not restore, the state.
	ErrStateTransfer = errors.New("gcs: state transfer failed")
	// ErrCorrupt: the memnodes hold something gcs did not write.
	ErrCorrupt = errors.New("gcs: corrupt group data")
)
