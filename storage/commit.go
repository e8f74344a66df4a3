package storage

import (
	"fmt"
	"sort"
)

// Flush commits every write completed before it: after Flush returns they
// survive a power cut.
func (s *Store) Flush() error {
	s.lockExclusive()
	defer s.unlockExclusive()
	if err := s.usableLocked(true); err != nil {
		return err
	}
	return s.commitLocked(false, true)
}

// waitCommit returns once the commit running now, if any, has finished.
func (s *Store) waitCommit() {
	s.flushMu.Lock()
	s.flushMu.Unlock() //nolint:staticcheck // an empty critical section: waiting is the point
}

// commitLocked writes dirty metadata to the free slots, then the
// superblock with the new root and epoch. Order: metadata writes, one sync
// (covering the data written since the last commit too), superblock write,
// sync. The previous superblock and every
// block it references stay untouched, so a power cut at any instant leaves
// either the old or the new committed state. Called with flushMu, writeMu
// and commitMu held exclusively; it releases commitMu across the syncs
// and the superblock write, and with writers also writeMu, and holds both
// again when it returns. force writes the superblock even with nothing
// dirty.
func (s *Store) commitLocked(force, writers bool) error {
	dirty := s.cache.takeDirty()
	if len(dirty) == 0 && !force {
		return nil
	}
	err := s.commitNodes(dirty, writers)
	if err != nil {
		s.failed = fmt.Errorf("%w: commit: %w", ErrFailed, err)
		s.log.Error("storage commit failed; store disabled until reopened", "err", err)
		return s.failed
	}
	s.commits.Add(1)
	return nil
}

func (s *Store) commitNodes(dirty []*node, writers bool) error {
	sort.Slice(dirty, func(i, j int) bool {
		if dirty[i].level != dirty[j].level {
			return dirty[i].level < dirty[j].level
		}
		return dirty[i].index < dirty[j].index
	})
	buf := make([]byte, BlockSize)
	root := s.sb.root
	top := s.geom.depth() - 1
	for _, n := range dirty {
		// Parents were dirtied with their children, so they come later in
		// this sorted list and are still cached.
		var pe *nodeEntry
		var parent *node
		if n.level == top {
			pe = &root
		} else {
			parent = s.cache.lookup(nodeKey{n.level + 1, n.index / nodeFanout})
			if parent == nil || !parent.dirty.Load() {
				return fmt.Errorf("internal: parent of dirty node %d/%d not pinned", n.level, n.index)
			}
			pe = &parent.child[n.index%nodeFanout]
		}
		if n.level == 0 {
			encodeLeaf(buf, n.leaf)
		} else {
			encodeInner(buf, n.child)
		}
		slot := 0
		if pe.present() {
			slot = pe.slot() ^ 1
		}
		if _, err := s.dev.WriteAt(buf, int64(s.geom.nodeBlock(n.level, n.index, slot))*BlockSize); err != nil {
			return fmt.Errorf("write metadata: %w", err)
		}
		pe.hash = nodeHash(n.level, n.index, buf)
		pe.flags = flagMapped | byte(slot<<1)
	}
	next := s.sb
	next.root = root
	next.epoch++
	next.nonceRes = s.nextNonce.Load() + nonceReserve
	// Readers may run from here until the flip below, and with writers
	// so may writes to blocks of leaves this commit does not include
	// (writes to the others see committing and wait): the committed
	// nodes do not change, and everything a reader can load from disk
	// (clean nodes, data) or a writer can write (the free slots of
	// uncommitted leaves' blocks) is in slots neither the old nor the new
	// superblock references. See docs/storage-format.md, Concurrency.
	for _, n := range dirty {
		n.committing.Store(true)
	}
	s.commitMu.Unlock()
	if writers {
		s.writeMu.Unlock()
	}
	err := s.publish(&next)
	if writers {
		s.writeMu.Lock() // waits for the writes that ran meanwhile
	}
	s.commitMu.Lock()
	for _, n := range dirty {
		n.committing.Store(false)
	}
	if err != nil {
		return err
	}
	s.sb = next
	s.nonceLimit.Store(next.nonceRes)
	for _, n := range dirty {
		if n.level == 0 {
			for i := range n.leaf {
				n.free[i] = uint8(n.leaf[i].slot() ^ 1)
			}
		}
		n.dirty.Store(false)
	}
	// Nodes dirtied by writes during the syncs keep their ancestors
	// pinned, as absentLeaves and the next commit rely on; those
	// ancestors were in this commit and are clean now. No eviction can
	// run (commitMu is held), so they are all still cached.
	for _, n := range s.cache.dirtyNodes() {
		for l, i := n.level+1, n.index/nodeFanout; l < s.geom.depth(); l, i = l+1, i/nodeFanout {
			a := s.cache.lookup(nodeKey{l, i})
			if a == nil || !s.cache.markDirty(a) {
				return fmt.Errorf("internal: ancestor %d/%d of dirty node %d/%d not cached", l, i, n.level, n.index)
			}
		}
	}
	s.cache.recountDirty()
	return nil
}

// publish makes a commit durable: sync (metadata and data), superblock,
// sync. Called with writeMu held exclusively and commitMu not held.
func (s *Store) publish(next *superblock) error {
	if err := s.dev.Sync(); err != nil {
		return fmt.Errorf("sync metadata: %w", err)
	}
	if err := writeSuperblock(s.dev, s.keys, next); err != nil {
		return err
	}
	if err := s.dev.Sync(); err != nil {
		return fmt.Errorf("sync superblock: %w", err)
	}
	return nil
}

// maybeCommit commits early when dirty metadata outgrows its share of the
// cache or the reserved nonces run low.
func (s *Store) maybeCommit() error {
	if s.cache.ndirty.Load() < s.maxDirty && !s.noncesLow(0) {
		return nil
	}
	return s.Flush()
}
