package predict_test

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"os"
	"testing"
	"unicode/utf16"

	"github.com/dataembassy/embassy/images/predict"
)

const (
	snakeoilVars = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd"
	plainVars    = "/usr/share/OVMF/OVMF_VARS_4M.fd"
	snakeoilCert = "/usr/share/ovmf/PkKek-1-snakeoil.pem"
)

func readOVMF(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (install ovmf)", err)
	}
	return b
}

func TestParseVarStoreSnakeoil(t *testing.T) {
	vars, err := predict.ParseVarStore(readOVMF(t, snakeoilVars))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]int{}
	for _, v := range vars {
		names[v.Name] = len(v.Data)
	}
	// Sizes match the EV_EFI_VARIABLE_DRIVER_CONFIG events of a real boot.
	for name, size := range map[string]int{"PK": 935, "KEK": 935, "db": 935, "dbx": 76} {
		if names[name] != size {
			t.Errorf("%s: %d bytes, want %d (all: %v)", name, names[name], size, names)
		}
	}
}

func TestSecureBootEvents(t *testing.T) {
	b := readOVMF(t, snakeoilCert)
	blk, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := predict.SecureBootEvents(predict.SecureBoot{VarStore: readOVMF(t, snakeoilVars), Signer: cert})
	if err != nil {
		t.Fatal(err)
	}
	if len(ev) != 7 || ev[5].Type != predict.EvSeparator || ev[6].Type != predict.EvEFIVariableAuthority {
		t.Fatalf("events:\n%s", predict.Describe(ev))
	}
	// No PK: Secure Boot cannot be on.
	if _, err := predict.SecureBootEvents(predict.SecureBoot{VarStore: readOVMF(t, plainVars), Signer: cert}); !errors.Is(err, predict.ErrVarStore) {
		t.Errorf("plain vars: error %v, want ErrVarStore", err)
	}
	// A signer db does not know.
	other := *cert
	other.Raw = append([]byte(nil), cert.Raw...)
	other.Raw[len(other.Raw)-1] ^= 1
	other.Signature = append([]byte(nil), cert.Signature...)
	other.Signature[0] ^= 1
	if _, err := predict.SecureBootEvents(predict.SecureBoot{VarStore: readOVMF(t, snakeoilVars), Signer: &other}); !errors.Is(err, predict.ErrNoAuthority) {
		t.Errorf("unknown signer: error %v, want ErrNoAuthority", err)
	}
}

// syntheticVarStore builds a small OVMF-style variables volume.
func syntheticVarStore(vars map[string][]byte) []byte {
	fv := make([]byte, 72)
	copy(fv[40:], "_FVH")
	binary.LittleEndian.PutUint16(fv[48:], 72)
	store := []byte{0x78, 0x2c, 0xf3, 0xaa, 0x7b, 0x94, 0x9a, 0x43, 0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3, 0x77, 0x92}
	store = append(store, make([]byte, 12)...)
	for name, data := range vars {
		u := utf16.Encode([]rune(name + "\x00"))
		h := make([]byte, 60)
		binary.LittleEndian.PutUint16(h, 0x55aa)
		h[2] = 0x3f
		binary.LittleEndian.PutUint32(h[36:], uint32(2*len(u)))
		binary.LittleEndian.PutUint32(h[40:], uint32(len(data)))
		copy(h[44:], []byte{0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c})
		store = append(store, h...)
		for _, c := range u {
			store = binary.LittleEndian.AppendUint16(store, c)
		}
		store = append(store, data...)
		for len(store)%4 != 0 {
			store = append(store, 0xff)
		}
	}
	store = append(store, bytes.Repeat([]byte{0xff}, 64)...)
	binary.LittleEndian.PutUint32(store[16:], uint32(len(store)))
	return append(fv, store...)
}

func TestParseVarStoreSynthetic(t *testing.T) {
	vars, err := predict.ParseVarStore(syntheticVarStore(map[string][]byte{"PK": []byte("pk-data")}))
	if err != nil {
		t.Fatal(err)
	}
	if len(vars) != 1 || vars[0].Name != "PK" || string(vars[0].Data) != "pk-data" {
		t.Fatalf("vars = %+v", vars)
	}
	for _, bad := range [][]byte{nil, make([]byte, 100), syntheticVarStore(nil)[:80]} {
		if _, err := predict.ParseVarStore(bad); !errors.Is(err, predict.ErrVarStore) {
			t.Errorf("ParseVarStore(%d bytes) error %v, want ErrVarStore", len(bad), err)
		}
	}
}

// FuzzParseVarStore: arbitrary firmware images parse or give ErrVarStore.
func FuzzParseVarStore(f *testing.F) {
	f.Add(syntheticVarStore(map[string][]byte{"PK": []byte("pk"), "db": []byte("db-data")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := predict.ParseVarStore(b); err != nil && !errors.Is(err, predict.ErrVarStore) {
			t.Fatalf("unexpected error: %v", err)
		}
	})
}
