package storage

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// node is one metadata block in memory. Leaves (level 0) hold per-block
// entries; inner nodes hold child references.
type node struct {
	level int
	index uint64

	mu    sync.RWMutex // guards leaf, free and child
	leaf  []leafEntry  // level 0
	free  []uint8      // level 0: the slot a write this epoch goes to
	child []nodeEntry  // level > 0

	dirty atomic.Bool // changed since the last commit; pinned in the cache
	// committing: the commit in progress writes this node; writes that
	// would change it wait for the commit to finish.
	committing atomic.Bool
	ref        atomic.Bool // recently used (CLOCK eviction)
}

type nodeKey struct {
	level int
	index uint64
}

// nodeCache holds metadata nodes, bounded by capacity except for dirty
// nodes, which stay until the next commit writes them.
type nodeCache struct {
	mu       sync.RWMutex
	m        map[nodeKey]*node
	capacity int

	dirtyMu sync.Mutex
	dirty   []*node
	ndirty  atomic.Int64
}

func newNodeCache(capacity int) *nodeCache {
	return &nodeCache{m: make(map[nodeKey]*node), capacity: capacity}
}

func (c *nodeCache) lookup(k nodeKey) *node {
	c.mu.RLock()
	n := c.m[k]
	c.mu.RUnlock()
	if n != nil && !n.ref.Load() {
		n.ref.Store(true)
	}
	return n
}

// insert adds n unless another goroutine loaded the same node first, and
// returns the cached node. With dirty the node is pinned before anything
// is evicted, so a caller that needs it dirty always makes progress.
func (c *nodeCache) insert(n *node, dirty bool) *node {
	k := nodeKey{n.level, n.index}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[k]; old != nil {
		n = old
	} else {
		n.ref.Store(true)
		c.m[k] = n
	}
	if dirty {
		c.pinLocked(n)
	}
	if len(c.m) > c.capacity {
		c.evictLocked(k)
	}
	return n
}

// pinLocked marks n dirty; called with mu held (either way).
func (c *nodeCache) pinLocked(n *node) {
	if n.dirty.CompareAndSwap(false, true) {
		c.dirtyMu.Lock()
		c.dirty = append(c.dirty, n)
		c.dirtyMu.Unlock()
		c.ndirty.Add(1)
	}
}

// evictLocked drops clean nodes other than keep, CLOCK style, until the
// cache is an eighth below capacity or nothing more can go.
func (c *nodeCache) evictLocked(keep nodeKey) {
	target := c.capacity - c.capacity/8
	for pass := 0; pass < 2 && len(c.m) > target; pass++ {
		for k, n := range c.m {
			if len(c.m) <= target {
				return
			}
			if n.dirty.Load() || k == keep {
				continue
			}
			if n.ref.Load() {
				n.ref.Store(false)
				continue
			}
			delete(c.m, k)
		}
	}
}

// markDirty pins n (which must be the cached instance) until the next
// commit. It reports false if n was evicted meanwhile; the caller reloads.
func (c *nodeCache) markDirty(n *node) bool {
	if n.dirty.Load() {
		return true
	}
	c.mu.RLock()
	defer c.mu.RUnlock() // eviction holds the write lock, so n stays put
	if c.m[nodeKey{n.level, n.index}] != n {
		return false
	}
	c.pinLocked(n)
	return true
}

// takeDirty returns the dirty nodes and empties the list. Called with the
// store's commit lock held exclusively.
func (c *nodeCache) takeDirty() []*node {
	c.dirtyMu.Lock()
	d := c.dirty
	c.dirty = nil
	c.dirtyMu.Unlock()
	return d
}

// dirtyNodes returns a copy of the list of dirty nodes.
func (c *nodeCache) dirtyNodes() []*node {
	c.dirtyMu.Lock()
	defer c.dirtyMu.Unlock()
	return append([]*node(nil), c.dirty...)
}

// recountDirty sets the dirty count to the length of the dirty list.
func (c *nodeCache) recountDirty() {
	c.dirtyMu.Lock()
	defer c.dirtyMu.Unlock()
	c.ndirty.Store(int64(len(c.dirty)))
}

func (c *nodeCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

// parentEntry returns the reference to node (level, index): from its parent
// node, or the superblock's root. Callers hold s.commitMu (read or write).
func (s *Store) parentEntry(level int, index uint64) (nodeEntry, error) {
	if level == s.geom.depth()-1 {
		return s.sb.root, nil
	}
	p, err := s.getNode(level+1, index/nodeFanout)
	if err != nil {
		return nodeEntry{}, err
	}
	p.mu.RLock()
	e := p.child[index%nodeFanout]
	p.mu.RUnlock()
	return e, nil
}

// getNode returns node (level, index), loading and authenticating it
// against its parent's hash if it is not cached. Callers hold s.commitMu.
func (s *Store) getNode(level int, index uint64) (*node, error) {
	return s.loadNode(level, index, false)
}

// loadNode is getNode; with dirty a node it loads is inserted pinned.
func (s *Store) loadNode(level int, index uint64, dirty bool) (*node, error) {
	k := nodeKey{level, index}
	if n := s.cache.lookup(k); n != nil {
		return n, nil
	}
	e, err := s.parentEntry(level, index)
	if err != nil {
		return nil, err
	}
	n := &node{level: level, index: index}
	if !e.present() {
		// Never written: an all-zero node, with nothing on disk yet.
		if level == 0 {
			n.leaf = make([]leafEntry, leafEntries)
			n.free = make([]uint8, leafEntries)
			for i := range n.free {
				n.free[i] = 1
			}
		} else {
			n.child = make([]nodeEntry, nodeFanout)
		}
		return s.cache.insert(n, dirty), nil
	}
	// Pooled: decoding copies what it keeps, and a fresh 4 KiB per miss
	// kept the GC and scavenger busy when the cache is much smaller than
	// the store.
	bp := getBuf(1)
	defer putBuf(bp)
	buf := (*bp)[:BlockSize]
	if err := s.readDevice(buf, int64(s.geom.nodeBlock(level, index, e.slot()))*BlockSize); err != nil {
		return nil, fmt.Errorf("storage: read metadata level %d node %d: %w", level, index, err)
	}
	if nodeHash(level, index, buf) != e.hash {
		return nil, s.integrity(&IntegrityError{Block: -1, Level: level, Node: index, Reason: "metadata hash mismatch"})
	}
	if level == 0 {
		es, err := decodeLeaf(buf)
		if err != nil {
			return nil, s.integrity(&IntegrityError{Block: -1, Level: level, Node: index, Reason: err.Error()})
		}
		n.leaf = es
		n.free = make([]uint8, leafEntries)
		for i := range es {
			n.free[i] = uint8(es[i].slot() ^ 1)
		}
	} else {
		es, err := decodeInner(buf)
		if err != nil {
			return nil, s.integrity(&IntegrityError{Block: -1, Level: level, Node: index, Reason: err.Error()})
		}
		n.child = es
	}
	return s.cache.insert(n, dirty), nil
}

// getDirtyNode returns node (level, index) pinned as dirty.
func (s *Store) getDirtyNode(level int, index uint64) (*node, error) {
	for {
		n, err := s.loadNode(level, index, true)
		if err != nil {
			return nil, err
		}
		// A cache hit may be evicted before it is pinned: then reload,
		// which pins it on insertion.
		if s.cache.markDirty(n) {
			return n, nil
		}
	}
}

// dirtyLeaf returns leaf li pinned as dirty, after pinning every ancestor
// top-down: a dirty node's ancestors are always cached and dirty, which
// commit and absentLeaves rely on.
func (s *Store) dirtyLeaf(li uint64) (*node, error) {
	if n := s.cache.lookup(nodeKey{0, li}); n != nil && n.dirty.Load() {
		return n, nil
	}
	for l := s.geom.depth() - 1; l >= 1; l-- {
		if _, err := s.getDirtyNode(l, li/leafSpan(l)); err != nil {
			return nil, err
		}
	}
	return s.getDirtyNode(0, li)
}

// absentLeaves reports, for leaf index li, how many leaves starting at li
// are all-unmapped because an ancestor was never written and nothing below
// it is cached; 0 when li's leaf must be looked at.
func (s *Store) absentLeaves(li uint64) (uint64, error) {
	depth := s.geom.depth()
	nleaves := s.geom.levels[0]
	if !s.sb.root.present() && s.cache.lookup(nodeKey{depth - 1, 0}) == nil {
		return nleaves - li, nil
	}
	for l := depth - 1; l >= 1; l-- {
		n, err := s.getNode(l, li/leafSpan(l))
		if err != nil {
			return 0, err
		}
		cs := leafSpan(l - 1)
		n.mu.RLock()
		e := n.child[(li/cs)%nodeFanout]
		n.mu.RUnlock()
		if !e.present() && s.cache.lookup(nodeKey{l - 1, li / cs}) == nil {
			// Dirty nodes pin their ancestors, so nothing below differs
			// from zero.
			end := (li/cs + 1) * cs
			if end > nleaves {
				end = nleaves
			}
			return end - li, nil
		}
	}
	return 0, nil
}
