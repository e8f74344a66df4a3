package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"text/tabwriter"
)

// Target is one make target and its doc.
type Target struct {
	// Name is the target's name; Doc its one-line doc ("" if it has none).
	Name, Doc string
	// Where is the file and line that defines the target (or, for a doc
	// that names no target, holds the doc).
	Where string
	// Defined is false for a doc whose target no rule defines.
	Defined bool
}

var (
	docLine = regexp.MustCompile(`^## ([A-Za-z0-9_.-]+): *(.*)$`)
	// A rule: names, one or two colons, then not '=' (that would be an
	// assignment such as `X := y`).
	ruleLine = regexp.MustCompile(`^([^\s#:=][^:=#]*?)\s*::?(?:[^=]|$)`)
)

// ParseFiles reads make files in order and returns their targets in the
// order they are first mentioned (by a doc or a rule). Special targets
// (.PHONY and the like) and targets named by a variable are left out:
// they are no entry points.
func ParseFiles(files ...string) ([]Target, error) {
	p := parser{index: map[string]int{}}
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, fmt.Errorf("reading make file: %w", err)
		}
		err = p.parse(f, fh)
		fh.Close()
		if err != nil {
			return nil, err
		}
	}
	return p.targets, nil
}

type parser struct {
	targets []Target
	index   map[string]int
}

func (p *parser) get(name string) *Target {
	i, ok := p.index[name]
	if !ok {
		i = len(p.targets)
		p.index[name] = i
		p.targets = append(p.targets, Target{Name: name})
	}
	return &p.targets[i]
}

func (p *parser) parse(file string, r io.Reader) error {
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		where := fmt.Sprintf("%s:%d", file, n)
		if m := docLine.FindStringSubmatch(line); m != nil {
			t := p.get(m[1])
			if t.Doc != "" {
				return fmt.Errorf("%s: second doc for %s", where, m[1])
			}
			t.Doc = strings.TrimSpace(m[2])
			if t.Where == "" {
				t.Where = where
			}
			continue
		}
		if strings.HasPrefix(line, "\t") {
			continue // a recipe
		}
		m := ruleLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		for _, name := range strings.Fields(m[1]) {
			if strings.HasPrefix(name, ".") || strings.Contains(name, "$") {
				continue
			}
			t := p.get(name)
			if !t.Defined {
				t.Defined, t.Where = true, where
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading %s: %w", file, err)
	}
	return nil
}

// Write prints the targets that have rules, one a line with its doc.
func Write(w io.Writer, targets []Target) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, t := range targets {
		if t.Defined {
			fmt.Fprintf(tw, "  %s\t%s\n", t.Name, t.Doc)
		}
	}
	tw.Flush()
}

// Check reports every target without a doc and every doc without a target.
func Check(targets []Target) error {
	var errs []error
	for _, t := range targets {
		switch {
		case !t.Defined:
			errs = append(errs, fmt.Errorf("%s: doc for %s, which no rule defines", t.Where, t.Name))
		case t.Doc == "":
			errs = append(errs, fmt.Errorf("%s: target %s has no \"## %s: doc\" comment", t.Where, t.Name, t.Name))
		}
	}
	return errors.Join(errs...)
}
