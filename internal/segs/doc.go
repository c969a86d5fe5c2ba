// Package segs keeps the content of disjoint byte ranges of an address
// space with the newest bytes winning where writes overlap: the data of
// watch events, accumulated by memnode/service for a subscriber and merged
// by the client when a consumer falls behind.
//
// It owns only that bookkeeping: it does no I/O, keeps no state between
// calls, and never modifies the bytes it is given (segments are resliced,
// not written). Its behaviour is tested through its users, against a model
// (memnode/service TestWatchOverlayModel) and end to end (client
// TestWatchDataTracksMemory).
package segs
