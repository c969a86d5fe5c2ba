// Package syncbuf is a bytes.Buffer that several goroutines may write to
// and read at once: where tests collect a logger's or a process's output
// while it runs. It holds no other state and touches nothing else.
package syncbuf
