//go:build race

package storage_test

// raceEnabled shortens the slowest tests under the race detector.
const raceEnabled = true
