package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// The one way every embassyctl command declares and parses its flags, so
// that all of them answer --help (usage on stdout, exit 0) and wrong
// arguments (usage on stderr, exit 2) alike.

// errUsage marks an error caused by wrong arguments; main exits 2 for it.
var errUsage = errors.New("usage error")

// cmdFlags is one command's flag set with its usage line and the flags and
// positional arguments it needs.
type cmdFlags struct {
	*flag.FlagSet
	name, synopsis   string
	stdout, stderr   io.Writer
	required         []string
	minArgs, maxArgs int
}

// newFlags returns the flag set of command name (e.g. "store format");
// synopsis is what follows the name on the usage line (e.g. "[flags]
// DEVICE"). It takes no positional arguments until args says otherwise.
func newFlags(name, synopsis string, stdout, stderr io.Writer) *cmdFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// parse prints usage and errors itself, to the stream each belongs on.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &cmdFlags{FlagSet: fs, name: name, synopsis: synopsis, stdout: stdout, stderr: stderr}
}

// args sets how many positional arguments parse accepts: from min to max,
// or any number from min when max < 0.
func (f *cmdFlags) args(min, max int) *cmdFlags {
	f.minArgs, f.maxArgs = min, max
	return f
}

// require names flags that must be given a non-empty value.
func (f *cmdFlags) require(names ...string) *cmdFlags {
	f.required = append(f.required, names...)
	return f
}

// printUsage writes the usage line and the flags' defaults to w.
func (f *cmdFlags) printUsage(w io.Writer) {
	fmt.Fprintf(w, "usage: embassyctl %s %s\n", f.name, f.synopsis)
	header := "\nflags:\n"
	f.VisitAll(func(fl *flag.Flag) {
		fmt.Fprint(w, header)
		header = ""
		printFlag(w, fl)
	})
}

// printFlag writes one flag's line of the usage as flag.PrintDefaults
// does, but spelt as the synopses spell it: --name (-x for one letter).
func printFlag(w io.Writer, fl *flag.Flag) {
	arg, usage := flag.UnquoteUsage(fl)
	dash := "--"
	if len(fl.Name) == 1 {
		dash = "-"
	}
	fmt.Fprintf(w, "  %s%s", dash, fl.Name)
	if arg != "" {
		fmt.Fprintf(w, " %s", arg)
	}
	fmt.Fprintf(w, "\n    \t%s", strings.ReplaceAll(usage, "\n", "\n    \t"))
	switch fl.DefValue {
	case "", "false", "0", "[]":
	default:
		if arg == "string" {
			fmt.Fprintf(w, " (default %q)", fl.DefValue)
		} else {
			fmt.Fprintf(w, " (default %v)", fl.DefValue)
		}
	}
	fmt.Fprintln(w)
}

// parse parses args. For -h or --help it prints the usage to stdout and
// returns flag.ErrHelp; for an unknown flag or bad value, a missing
// required flag or a wrong number of positional arguments it prints the
// usage to stderr and returns an error wrapping errUsage.
func (f *cmdFlags) parse(args []string) error {
	if err := f.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			f.printUsage(f.stdout)
			return err
		}
		return f.usageError("%v", err)
	}
	var missing []string
	for _, name := range f.required {
		if fl := f.Lookup(name); fl == nil || fl.Value.String() == "" {
			missing = append(missing, "--"+name)
		}
	}
	if len(missing) > 0 {
		return f.usageError("%s required", strings.Join(missing, ", "))
	}
	if n := f.NArg(); n < f.minArgs || (f.maxArgs >= 0 && n > f.maxArgs) {
		return f.usageError("want %s, got %d: %q", argCount(f.minArgs, f.maxArgs), n, f.Args())
	}
	return nil
}

// argCount says how many positional arguments min and max allow.
func argCount(min, max int) string {
	switch {
	case max < 0:
		return fmt.Sprintf("at least %d argument(s)", min)
	case min == max:
		return fmt.Sprintf("%d argument(s)", min)
	default:
		return fmt.Sprintf("%d to %d arguments", min, max)
	}
}

// usageError prints the usage to stderr and returns an error wrapping
// errUsage that says what is wrong.
func (f *cmdFlags) usageError(format string, a ...any) error {
	f.printUsage(f.stderr)
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, a...))
}

// subcommand runs one subcommand with the arguments after its name.
type subcommand func(args []string, stdout, stderr io.Writer) error

// subcommands dispatches "name sub args": help on stdout for -h, --help
// or help; usage on stderr and a usage error for a missing or unknown
// subcommand.
func subcommands(args []string, stdout, stderr io.Writer, usage string, subs map[string]subcommand) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: missing subcommand", errUsage)
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return flag.ErrHelp
	}
	f, ok := subs[args[0]]
	if !ok {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: unknown subcommand %q", errUsage, args[0])
	}
	return f(args[1:], stdout, stderr)
}
