package nbd

import (
	"errors"
	"syscall"
)

// This file decides what a transmission request does: it checks the
// request against the connection and the export, runs its command
// (commands.go, blockstatus.go) and maps a backend error to an NBD error.

// Known command flags per command; anything else is EINVAL.
var allowedFlags = map[uint16]uint16{
	cmdRead:        cmdFlagDF,
	cmdWrite:       cmdFlagFUA,
	cmdFlush:       0,
	cmdTrim:        cmdFlagFUA,
	cmdCache:       0,
	cmdWriteZeroes: cmdFlagFUA | cmdFlagNoHole | cmdFlagFastZero,
	cmdBlockStatus: cmdFlagReqOne,
}

// refusal is a request refused with an NBD error of the server's choosing,
// whose message goes to the client (in an error chunk, with structured
// replies). They are package variables so refusing allocates nothing.
type refusal struct {
	errno uint32
	msg   string
}

func (r *refusal) Error() string { return "nbd: " + r.msg }

var (
	refuseUnknown      = &refusal{errInval, "unknown command"}
	refuseFlags        = &refusal{errInval, "unsupported command flags"}
	refuseDF           = &refusal{errInval, "DF without structured replies"}
	refuseTooLarge     = &refusal{errInval, "request too large"}
	refuseReadOverflow = &refusal{errOverflow, "read too large for one chunk"}
	refuseReadTooLarge = &refusal{errInval, "read larger than maximum payload"}
	refuseReadOnly     = &refusal{errPerm, "export is read-only"}
	refuseNoSpace      = &refusal{errNoSpc, "beyond end of export"}
	refuseBeyondEnd    = &refusal{errInval, "beyond end of export"}
	refuseSlowZero     = &refusal{errNotSup, "cannot zero quickly"}
	refuseNoContext    = &refusal{errInval, "no metadata context negotiated"}
	refuseZeroStatus   = &refusal{errInval, "zero-length block status"}
)

// handle serves one request and fills rep. With inline it runs on the
// reader goroutine and serves only what c.inline says needs no device
// wait; it returns false, having done nothing, for a request that must go
// to a worker. Without inline it runs on a worker and always serves.
func (c *conn) handle(r *request, rep *reply, inline bool) bool {
	if inline {
		switch {
		case r.typ == cmdRead:
			// readAtNoWait decides in serveRead, before anything is done.
		case r.typ == cmdWrite && r.flags&cmdFlagFUA == 0 && !r.tooLarge:
			if !c.inline.writeInline(int64(r.off), int64(r.length)) {
				return false
			}
		default:
			return false
		}
	}
	*rep = reply{cookie: r.cookie}
	served, err := c.dispatch(r, rep, inline)
	if served {
		c.s.requests.Add(1)
		if c.s.obs != nil {
			c.observe(r, err)
		}
	}
	return served
}

// dispatch checks r, runs its command and fills rep with the outcome,
// returning the error answered (nil: success). It returns served false
// only for an inline read that would wait for the device.
func (c *conn) dispatch(r *request, rep *reply, inline bool) (served bool, err error) {
	if r.typ == cmdRead || r.typ == cmdBlockStatus {
		rep.kind = kindRead // errors on these go in an error chunk
	}
	err = c.check(r)
	if err == nil {
		switch r.typ {
		case cmdRead:
			var wouldBlock bool
			if wouldBlock, err = c.serveRead(r, rep, inline); wouldBlock {
				return false, nil
			}
		case cmdWrite:
			err = c.serveWrite(r)
		case cmdFlush:
			err = c.serveFlush()
		case cmdTrim:
			err = c.serveTrim(r)
		case cmdWriteZeroes:
			err = c.serveWriteZeroes(r)
		case cmdCache:
			err = c.serveCache(r)
		case cmdBlockStatus:
			err = c.serveBlockStatus(r, rep)
		}
		if err == nil && r.flags&cmdFlagFUA != 0 {
			err = c.exp.Backend.Flush()
		}
	}
	if err != nil {
		putBuf(r.data)
		r.data = nil
		if rf, ok := err.(*refusal); ok {
			rep.errno, rep.msg = rf.errno, rf.msg
		} else {
			rep.errno = c.errno(err, r)
		}
	}
	return true, err
}

// check refuses a request the connection or the export does not allow,
// before the backend sees it: an unknown command or flag, a payload too
// large, a write to a read-only export, a range beyond the end.
func (c *conn) check(r *request) error {
	allowed, known := allowedFlags[r.typ]
	switch {
	case !known:
		return refuseUnknown
	case r.flags&^allowed != 0:
		return refuseFlags
	case r.flags&cmdFlagDF != 0 && !c.structured:
		return refuseDF
	case r.tooLarge:
		return refuseTooLarge
	case r.typ == cmdRead && r.length > c.s.maxPay:
		if r.flags&cmdFlagDF != 0 {
			return refuseReadOverflow
		}
		return refuseReadTooLarge
	}
	end := r.off + uint64(r.length)
	inRange := end >= r.off && end <= uint64(c.size)
	writes := r.typ == cmdWrite || r.typ == cmdTrim || r.typ == cmdWriteZeroes
	if writes && c.readOnly {
		return refuseReadOnly
	}
	if !inRange {
		if r.typ == cmdWrite || r.typ == cmdWriteZeroes {
			return refuseNoSpace
		}
		return refuseBeyondEnd
	}
	return nil
}

// errno maps a backend error to an NBD error, counting and logging
// integrity failures.
func (c *conn) errno(err error, r *request) uint32 {
	switch {
	case errors.Is(err, ErrIntegrity):
		c.s.integrity.Add(1)
		c.log.Error("nbd: integrity error", "cmd", r.typ, "offset", r.off, "length", r.length, "err", err)
		return errIO
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return errNoSpc
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS):
		return errPerm
	case errors.Is(err, syscall.ENOMEM):
		return errNoMem
	}
	c.log.Error("nbd: request failed", "cmd", r.typ, "offset", r.off, "length", r.length, "err", err)
	return errIO
}
