package appliance_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/dataembassy/embassy/appliance"
)

func TestDeriveServerIdentity(t *testing.T) {
	kek := bytes.Repeat([]byte{7}, 32)
	ips := []net.IP{net.IPv4(127, 0, 0, 1)}
	a, err := appliance.DeriveServerIdentity(kek, "lux-01", ips)
	if err != nil {
		t.Fatal(err)
	}
	b, err := appliance.DeriveServerIdentity(kek, "lux-01", ips)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.CertPEM, b.CertPEM) || a.Fingerprint != b.Fingerprint {
		t.Error("same KEK gave different certificates")
	}
	other, err := appliance.DeriveServerIdentity(bytes.Repeat([]byte{8}, 32), "lux-01", ips)
	if err != nil {
		t.Fatal(err)
	}
	if other.Fingerprint == a.Fingerprint {
		t.Error("different KEKs gave the same identity")
	}

	// A client pinning the PEM verifies a TLS handshake with the identity;
	// a client pinning another identity refuses it.
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{a.Certificate}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	dial := func(pemData []byte) error {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			t.Fatal("CertPEM does not parse")
		}
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}}
		c, err := d.Dial("tcp", l.Addr().String())
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(a.CertPEM); err != nil {
		t.Fatalf("client handshake against the derived identity: %v", err)
	}
	if err := dial(other.CertPEM); err == nil {
		t.Error("handshake succeeded against a different pinned identity")
	}

	a.Zeroize()
	if k := a.Certificate.PrivateKey; !bytes.Equal(k.(ed25519.PrivateKey)[:8], make([]byte, 8)) {
		t.Error("Zeroize left the key")
	}
}
