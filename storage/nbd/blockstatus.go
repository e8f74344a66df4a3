package nbd

// This file answers NBD_CMD_BLOCK_STATUS for the base:allocation context:
// the backend's extents become (length, flags) descriptors.

// serveBlockStatus asks the backend for the range's extents and puts
// their descriptors in rep.
func (c *conn) serveBlockStatus(r *request, rep *reply) error {
	if !c.structured || !c.metaAlloc {
		return refuseNoContext
	}
	if r.length == 0 {
		return refuseZeroStatus
	}
	off, n := int64(r.off), int64(r.length)
	ext, err := c.exp.Backend.BlockStatus(off, n)
	if err != nil {
		return err
	}
	rep.kind = kindStatus
	rep.descs = descriptors(ext, off, n, r.flags&cmdFlagReqOne != 0)
	return nil
}

// descriptors turns backend extents into base:allocation descriptors that
// start at off, cover at most n bytes, and merge equal neighbours. Gaps or
// overlaps in what the backend returned are reported as data (status 0),
// which is always safe.
func descriptors(ext []Extent, off, n int64, one bool) []uint32 {
	var out []uint32
	pos, end := off, off+n
	add := func(length int64, status uint32) {
		for length > 0 {
			k := min(length, 1<<32-4096)
			if l := len(out); l >= 2 && out[l-1] == status && int64(out[l-2])+k < 1<<32 {
				out[l-2] += uint32(k)
			} else {
				out = append(out, uint32(k), status)
			}
			length -= k
		}
	}
	for _, e := range ext {
		if pos >= end || len(out) >= 2<<16 {
			break
		}
		eEnd := e.Offset + e.Length
		if e.Length <= 0 || eEnd <= pos {
			continue
		}
		if e.Offset > pos {
			add(min(e.Offset, end)-pos, 0)
			pos = min(e.Offset, end)
			if pos >= end {
				break
			}
		}
		var st uint32
		if e.Zero {
			st = stateHole | stateZero
		}
		k := min(eEnd, end) - pos
		add(k, st)
		pos += k
	}
	if len(out) == 0 {
		add(n, 0)
	}
	if one {
		out = out[:2]
	}
	return out
}
