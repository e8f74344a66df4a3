//go:build race

package nbd

// raceEnabled: the race detector sees the hand-off of data through a
// socket only in package syscall's Read and Write, so sockets are not
// read and written with raw system calls (rawsock.go) under it.
const raceEnabled = true
