package replication

import (
	"fmt"

	"github.com/rs/zerolog"
)

// raftLogger adapts zerolog to raft.Logger. raft is chatty: its Debug goes to
// Trace and its Info to Debug, so a Host at Info level only shows raft's
// warnings and errors. Fatal and Panic log at Error and then panic: raft calls
// them only on broken invariants, and the Host must not os.Exit underneath
// its embedding program.
type raftLogger struct {
	l zerolog.Logger
}

func (r raftLogger) Debug(v ...any)                 { r.l.Trace().Msg(fmt.Sprint(v...)) }
func (r raftLogger) Debugf(format string, v ...any) { r.l.Trace().Msgf(format, v...) }
func (r raftLogger) Info(v ...any)                  { r.l.Debug().Msg(fmt.Sprint(v...)) }
func (r raftLogger) Infof(format string, v ...any)  { r.l.Debug().Msgf(format, v...) }
func (r raftLogger) Warning(v ...any)               { r.l.Warn().Msg(fmt.Sprint(v...)) }
func (r raftLogger) Warningf(format string, v ...any) {
	r.l.Warn().Msgf(format, v...)
}
func (r raftLogger) Error(v ...any)                 { r.l.Error().Msg(fmt.Sprint(v...)) }
func (r raftLogger) Errorf(format string, v ...any) { r.l.Error().Msgf(format, v...) }
func (r raftLogger) Fatal(v ...any)                 { r.Panic(v...) }
func (r raftLogger) Fatalf(format string, v ...any) { r.Panicf(format, v...) }
func (r raftLogger) Panic(v ...any) {
	s := fmt.Sprint(v...)
	r.l.Error().Msg(s)
	panic(s)
}
func (r raftLogger) Panicf(format string, v ...any) {
	s := fmt.Sprintf(format, v...)
	r.l.Error().Msg(s)
	panic(s)
}

// pebbleLogger adapts zerolog to pebble.Logger (Info at Debug level).
type pebbleLogger struct {
	l zerolog.Logger
}

func (p pebbleLogger) Infof(format string, args ...any)  { p.l.Debug().Msgf(format, args...) }
func (p pebbleLogger) Errorf(format string, args ...any) { p.l.Error().Msgf(format, args...) }
func (p pebbleLogger) Fatalf(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	p.l.Error().Msg(s)
	panic(s)
}
