package predict

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf16"
)

// Secure Boot related event types.
const (
	EvEFIVariableDriverConfig uint32 = 0x80000001
	EvEFIVariableAuthority    uint32 = 0x800000e0
)

// PCRSecureBoot is PCR 7: Secure Boot state and the authorities that
// verified the boot applications.
const PCRSecureBoot = 7

// GUIDs in their on-disk (mixed-endian) byte order.
var (
	guidGlobalVariable  = guidBytes(0x8be4df61, 0x93ca, 0x11d2, [8]byte{0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c})
	guidImageSecurityDB = guidBytes(0xd719b2cb, 0x3d3a, 0x4596, [8]byte{0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f})
	guidCertX509        = guidBytes(0xa5c059a1, 0x94e4, 0x4aa7, [8]byte{0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72})
	guidAuthVarStore    = guidBytes(0xaaf32c78, 0x947b, 0x439a, [8]byte{0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3, 0x77, 0x92})
)

func guidBytes(a uint32, b, c uint16, d [8]byte) []byte {
	g := make([]byte, 16)
	binary.LittleEndian.PutUint32(g, a)
	binary.LittleEndian.PutUint16(g[4:], b)
	binary.LittleEndian.PutUint16(g[6:], c)
	copy(g[8:], d[:])
	return g
}

// ErrVarStore is returned (wrapped) for an unreadable firmware variable
// store.
var ErrVarStore = errors.New("predict: bad UEFI variable store")

// Variable is one UEFI variable from a firmware variable store.
type Variable struct {
	// Vendor is the vendor GUID in on-disk byte order.
	Vendor []byte
	// Name is the variable name.
	Name string
	// Data is the variable's value.
	Data []byte
}

// ParseVarStore reads the authenticated variable store of an OVMF
// variables image (OVMF_VARS*.fd): a firmware volume whose first bytes hold
// the variable store header, then variables with
// AUTHENTICATED_VARIABLE_HEADERs. Only live (VAR_ADDED) variables are
// returned.
func ParseVarStore(fd []byte) ([]Variable, error) {
	if len(fd) < 64 || string(fd[40:44]) != "_FVH" {
		return nil, fmt.Errorf("%w: no firmware volume header", ErrVarStore)
	}
	off := int(binary.LittleEndian.Uint16(fd[48:]))
	if off < 56 || off+28 > len(fd) || !bytes.Equal(fd[off:off+16], guidAuthVarStore) {
		return nil, fmt.Errorf("%w: no authenticated variable store", ErrVarStore)
	}
	size := int(binary.LittleEndian.Uint32(fd[off+16:]))
	if size < 28 || size > len(fd)-off {
		return nil, fmt.Errorf("%w: store size %d", ErrVarStore, size)
	}
	store := fd[off : off+size]
	const hdrLen = 60
	var vars []Variable
	for p := 28; p+hdrLen <= len(store); {
		h := store[p:]
		if binary.LittleEndian.Uint16(h) != 0x55aa {
			break
		}
		state := h[2]
		nameSize := int(binary.LittleEndian.Uint32(h[36:]))
		dataSize := int(binary.LittleEndian.Uint32(h[40:]))
		if nameSize < 0 || dataSize < 0 || nameSize > len(store) || dataSize > len(store) || p+hdrLen+nameSize+dataSize > len(store) || nameSize%2 != 0 {
			return nil, fmt.Errorf("%w: variable at %#x overruns the store", ErrVarStore, off+p)
		}
		if state == 0x3f { // VAR_ADDED, not deleted
			name := store[p+hdrLen : p+hdrLen+nameSize]
			u := make([]uint16, 0, nameSize/2)
			for i := 0; i+1 < len(name); i += 2 {
				c := binary.LittleEndian.Uint16(name[i:])
				if c == 0 {
					break
				}
				u = append(u, c)
			}
			vars = append(vars, Variable{
				Vendor: bytes.Clone(h[44:60]),
				Name:   string(utf16.Decode(u)),
				Data:   bytes.Clone(store[p+hdrLen+nameSize : p+hdrLen+nameSize+dataSize]),
			})
		}
		p += (hdrLen + nameSize + dataSize + 3) &^ 3
	}
	return vars, nil
}

// variableData encodes UEFI_VARIABLE_DATA, the event data (and digest input)
// of EV_EFI_VARIABLE_* events.
func variableData(vendor []byte, name string, data []byte) []byte {
	u := utf16.Encode([]rune(name))
	b := append([]byte(nil), vendor...)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(u)))
	b = binary.LittleEndian.AppendUint64(b, uint64(len(data)))
	for _, c := range u {
		b = binary.LittleEndian.AppendUint16(b, c)
	}
	return append(b, data...)
}

// SecureBoot describes a Secure Boot configuration for prediction.
type SecureBoot struct {
	// VarStore is the firmware's variables image (e.g. OVMF_VARS_4M.fd with
	// PK, KEK, db and dbx enrolled).
	VarStore []byte
	// Signer is the certificate that signed the UKI. The db entry that
	// verifies it (the same certificate or its issuer) is what firmware
	// logs as the authority.
	Signer *x509.Certificate
}

// SecureBootEvents returns OVMF's PCR 7 events with Secure Boot enabled:
// the SecureBoot, PK, KEK, db and dbx variables (EV_EFI_VARIABLE_DRIVER_CONFIG),
// the separator, and the db entry that authorised the UKI
// (EV_EFI_VARIABLE_AUTHORITY). systemd-stub starts the kernel inside the
// already verified UKI, so no further authority is logged.
func SecureBootEvents(sb SecureBoot) ([]Event, error) {
	vars, err := ParseVarStore(sb.VarStore)
	if err != nil {
		return nil, err
	}
	find := func(vendor []byte, name string) []byte {
		for _, v := range vars {
			if v.Name == name && bytes.Equal(v.Vendor, vendor) {
				return v.Data
			}
		}
		return nil
	}
	pk := find(guidGlobalVariable, "PK")
	if len(pk) == 0 {
		return nil, fmt.Errorf("%w: no PK enrolled, Secure Boot cannot be on", ErrVarStore)
	}
	var ev []Event
	add := func(typ uint32, vendor []byte, name string, data []byte) {
		ev = append(ev, Event{PCRSecureBoot, typ, sum(variableData(vendor, name, data)), name})
	}
	add(EvEFIVariableDriverConfig, guidGlobalVariable, "SecureBoot", []byte{1})
	add(EvEFIVariableDriverConfig, guidGlobalVariable, "PK", pk)
	add(EvEFIVariableDriverConfig, guidGlobalVariable, "KEK", find(guidGlobalVariable, "KEK"))
	add(EvEFIVariableDriverConfig, guidImageSecurityDB, "db", find(guidImageSecurityDB, "db"))
	add(EvEFIVariableDriverConfig, guidImageSecurityDB, "dbx", find(guidImageSecurityDB, "dbx"))
	ev = append(ev, separator(PCRSecureBoot))
	if sb.Signer == nil {
		return nil, errors.New("predict: Secure Boot prediction needs the signing certificate")
	}
	entry, err := dbEntryFor(find(guidImageSecurityDB, "db"), sb.Signer)
	if err != nil {
		return nil, err
	}
	ev = append(ev, Event{PCRSecureBoot, EvEFIVariableAuthority, sum(variableData(guidImageSecurityDB, "db", entry)), "db authority"})
	return ev, nil
}

// ErrNoAuthority is returned when no db certificate verifies the signer.
var ErrNoAuthority = errors.New("predict: no db certificate authorises the signer")

// dbEntryFor walks the EFI_SIGNATURE_LISTs in db and returns the
// EFI_SIGNATURE_DATA (owner GUID + DER certificate) of the first X.509 entry
// that is the signer or issued it.
func dbEntryFor(db []byte, signer *x509.Certificate) ([]byte, error) {
	for p := 0; p+28 <= len(db); {
		typ := db[p : p+16]
		listSize := int(binary.LittleEndian.Uint32(db[p+16:]))
		hdrSize := int(binary.LittleEndian.Uint32(db[p+20:]))
		sigSize := int(binary.LittleEndian.Uint32(db[p+24:]))
		if listSize < 28 || listSize > len(db)-p || hdrSize < 0 || hdrSize > listSize-28 || sigSize < 16 {
			return nil, fmt.Errorf("%w: malformed signature list in db", ErrVarStore)
		}
		if bytes.Equal(typ, guidCertX509) {
			for q := p + 28 + hdrSize; q+sigSize <= p+listSize; q += sigSize {
				entry := db[q : q+sigSize]
				c, err := x509.ParseCertificate(entry[16:])
				if err != nil {
					continue
				}
				if c.Equal(signer) || signer.CheckSignatureFrom(c) == nil {
					return bytes.Clone(entry), nil
				}
			}
		}
		p += listSize
	}
	return nil, ErrNoAuthority
}
