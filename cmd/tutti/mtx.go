package main

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/tutti-gcs/tutti/client"
)

func newMtx(g *globals) *cobra.Command {
	var (
		tf      tlsFlags
		seed    string
		reads   []string
		cmps    []string
		writes  []string
		asJSON  bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "mtx",
		Short: "Execute one minitransaction",
		Long: `Execute one Sinfonia minitransaction: if every --cmp item matches, the --read
items are returned and the --write items applied, atomically; otherwise nothing
is written and the failed compare is named (exit status 1), with the --read
items as they were when it failed if all items are on one memnode.

Items:
  --read  MEMNODE:ADDR:LEN      read LEN bytes
  --cmp   MEMNODE:ADDR=VALUE    the bytes at ADDR must equal VALUE
  --write MEMNODE:ADDR=VALUE    write VALUE at ADDR
ADDR and LEN are decimal or 0x-hex. VALUE is text, or hex:0a0b.., or
u32:N / u64:N (little-endian integers), or text:... for text that starts
with one of those prefixes. Each flag may be repeated.

Exit status: 0 committed, 1 a compare failed, 2 an error.`,
		Example: `  tutti mtx --write 0:0x10=hello
  tutti mtx --read 0:0x10:5
  tutti mtx --cmp 0:0x10=hello --write 0:0x10=world --read 0:0x10:5
  tutti mtx --cmp 0:0=u64:0 --write 0:0=u64:1 --json   # compare-and-swap a counter`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tx := client.NewTx()
			type item struct {
				Memnode uint64 `json:"memnode"`
				Addr    uint64 `json:"addr"`
				Len     uint32 `json:"len"`
			}
			var cmpItems, readItems []item
			for _, s := range cmps {
				mn, addr, v, err := parseAssign(s)
				if err != nil {
					return &exitError{2, fmt.Errorf("--cmp %q: %w", s, err)}
				}
				tx.Compare(mn, addr, v)
				cmpItems = append(cmpItems, item{mn, addr, uint32(len(v))})
			}
			for _, s := range reads {
				mn, addr, n, err := parseRead(s)
				if err != nil {
					return &exitError{2, fmt.Errorf("--read %q: %w", s, err)}
				}
				tx.Read(mn, addr, n)
				readItems = append(readItems, item{mn, addr, n})
			}
			for _, s := range writes {
				mn, addr, v, err := parseAssign(s)
				if err != nil {
					return &exitError{2, fmt.Errorf("--write %q: %w", s, err)}
				}
				tx.Write(mn, addr, v)
			}
			if tx.Empty() {
				return &exitError{2, fmt.Errorf("no items: give at least one --read, --cmp or --write (see --help)")}
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			dial, err := tf.loadDial()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			c, err := client.New(ctx, client.Config{Seeds: splitSeeds(seed), Logger: log, DialOptions: dial})
			if err != nil {
				return &exitError{2, explainConnErr(err, dial != nil)}
			}
			defer c.Close()
			res, err := c.Exec(ctx, tx)
			if err != nil {
				return &exitError{2, err}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				type readOut struct {
					item
					Hex  string `json:"hex"`
					Text string `json:"text,omitempty"`
				}
				o := struct {
					Committed     bool      `json:"committed"`
					FailedCompare *item     `json:"failed_compare,omitempty"`
					FailedIndex   *int      `json:"failed_compare_index,omitempty"`
					Reads         []readOut `json:"reads"`
				}{Committed: res.Committed, Reads: []readOut{}}
				if !res.Committed && res.FailedCompare >= 0 {
					o.FailedCompare = &cmpItems[res.FailedCompare]
					o.FailedIndex = &res.FailedCompare
				}
				for i, d := range res.Reads {
					r := readOut{item: readItems[i], Hex: hex.EncodeToString(d)}
					if printable(d) {
						r.Text = string(d)
					}
					o.Reads = append(o.Reads, r)
				}
				b, _ := json.Marshal(o)
				fmt.Fprintln(out, string(b))
			} else if res.Committed {
				fmt.Fprintln(out, "committed")
				for i, d := range res.Reads {
					it := readItems[i]
					fmt.Fprintf(out, "read %d:%#x:%d = %s\n", it.Memnode, it.Addr, it.Len, showBytes(d))
				}
			} else {
				fmt.Fprintf(out, "not committed: compare %d (--cmp %s) did not match; nothing was written\n", res.FailedCompare, cmps[res.FailedCompare])
				// One memnode answers its reads with the failed compare.
				for i, d := range res.Reads {
					it := readItems[i]
					fmt.Fprintf(out, "read %d:%#x:%d = %s (when the compare failed)\n", it.Memnode, it.Addr, it.Len, showBytes(d))
				}
			}
			if !res.Committed {
				return &exitError{1, fmt.Errorf("compare %d failed", res.FailedCompare)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	seedFlag(f, &seed)
	tf.register(f)
	f.StringArrayVar(&reads, "read", nil, "read item MEMNODE:ADDR:LEN (repeatable)")
	f.StringArrayVar(&cmps, "cmp", nil, "compare item MEMNODE:ADDR=VALUE (repeatable)")
	f.StringArrayVar(&writes, "write", nil, "write item MEMNODE:ADDR=VALUE (repeatable)")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	f.DurationVar(&timeout, "timeout", 10*time.Second, "give up after this long")
	return cmd
}

func parseUint(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X") {
		return strconv.ParseUint(s[2:], 16, 64)
	}
	return strconv.ParseUint(s, 10, 64)
}

func parseLoc(s string) (mn, addr uint64, err error) {
	m, a, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, fmt.Errorf("want MEMNODE:ADDR")
	}
	if mn, err = parseUint(m); err != nil {
		return 0, 0, fmt.Errorf("memnode %q: not a number", m)
	}
	if addr, err = parseUint(a); err != nil {
		return 0, 0, fmt.Errorf("address %q: not a number", a)
	}
	return mn, addr, nil
}

func parseRead(s string) (mn, addr uint64, n uint32, err error) {
	i := strings.LastIndex(s, ":")
	if strings.Count(s, ":") != 2 {
		return 0, 0, 0, fmt.Errorf("want MEMNODE:ADDR:LEN")
	}
	if mn, addr, err = parseLoc(s[:i]); err != nil {
		return 0, 0, 0, err
	}
	l, err := parseUint(s[i+1:])
	switch {
	case err != nil && errors.Is(err, strconv.ErrRange), err == nil && l > math.MaxUint32:
		return 0, 0, 0, fmt.Errorf("length %s: too large for one item (the memnodes take at most 1 MiB per item by default)", s[i+1:])
	case err != nil || l == 0:
		return 0, 0, 0, fmt.Errorf("length %q: want a positive number", s[i+1:])
	}
	return mn, addr, uint32(l), nil
}

func parseAssign(s string) (mn, addr uint64, v []byte, err error) {
	loc, val, ok := strings.Cut(s, "=")
	if !ok || strings.Count(loc, ":") != 1 {
		return 0, 0, nil, fmt.Errorf("want MEMNODE:ADDR=VALUE")
	}
	if mn, addr, err = parseLoc(loc); err != nil {
		return 0, 0, nil, err
	}
	v, err = parseValue(val)
	return mn, addr, v, err
}

func parseValue(s string) ([]byte, error) {
	switch {
	case strings.HasPrefix(s, "hex:"):
		b, err := hex.DecodeString(strings.TrimPrefix(s, "hex:"))
		if err != nil {
			return nil, fmt.Errorf("value %q: bad hex: %v", s, err)
		}
		if len(b) == 0 {
			return nil, fmt.Errorf("value %q: empty", s)
		}
		return b, nil
	case strings.HasPrefix(s, "u32:"), strings.HasPrefix(s, "u64:"):
		n, err := parseUint(s[4:])
		if err != nil {
			return nil, fmt.Errorf("value %q: not a number", s)
		}
		if s[1:3] == "32" {
			if n > 1<<32-1 {
				return nil, fmt.Errorf("value %q: does not fit 32 bits", s)
			}
			return binary.LittleEndian.AppendUint32(nil, uint32(n)), nil
		}
		return binary.LittleEndian.AppendUint64(nil, n), nil
	case strings.HasPrefix(s, "text:"):
		s = strings.TrimPrefix(s, "text:")
	}
	if s == "" {
		return nil, fmt.Errorf("empty value")
	}
	return []byte(s), nil
}

func printable(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func showBytes(b []byte) string {
	if printable(b) {
		return fmt.Sprintf("%q (hex %x)", b, b)
	}
	return "hex " + hex.EncodeToString(b)
}
