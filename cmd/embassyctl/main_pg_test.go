package main

import (
	"os"
	"testing"

	"github.com/dataembassy/embassy/internal/pgtest"
)

// TestMain stops the throwaway PostgreSQL cluster the recovery-mode tests
// on PostgreSQL start.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
