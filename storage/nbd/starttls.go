package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
)

// This file upgrades the handshake to TLS (NBD_OPT_STARTTLS) and takes the
// client's identities from its certificate.

// negotiateTLS answers NBD_OPT_STARTTLS.
func (c *conn) negotiateTLS(ctx context.Context, data []byte) error {
	const opt = optStartTLS
	if len(data) != 0 {
		return c.replyErr(opt, repErrInvalid, "STARTTLS takes no data")
	}
	if c.s.tlsConfig == nil {
		return c.replyErr(opt, repErrUnsup, "TLS not configured")
	}
	if c.tlsDone {
		return c.replyErr(opt, repErrInvalid, "TLS already negotiated")
	}
	return c.startTLS(ctx)
}

// startTLS acknowledges STARTTLS, runs the TLS handshake with a verified
// client certificate and restarts negotiation on top of it.
func (c *conn) startTLS(ctx context.Context) error {
	if err := c.reply(optStartTLS, repAck, nil); err != nil {
		return err
	}
	if err := c.bw.Flush(); err != nil {
		return err
	}
	if c.br.Buffered() != 0 {
		// The client sent bytes before seeing our ACK: they were not
		// protected by TLS, so we cannot use them.
		c.refuse("data sent before TLS handshake")
		return errHangup
	}
	sock := newTLSSocket(c.raw)
	tc := tls.Server(sock, c.s.tlsConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.refuse("TLS handshake failed", "err", err)
		return errHangup
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		c.refuse("no client certificate")
		return errHangup
	}
	leaf := st.PeerCertificates[0]
	c.ids = c.ids[:0]
	if leaf.Subject.CommonName != "" {
		c.ids = append(c.ids, leaf.Subject.CommonName)
	}
	for _, u := range leaf.URIs {
		c.ids = append(c.ids, u.String())
	}
	c.tlsDone = true
	// Nothing negotiated before TLS carries over.
	c.structured, c.metaExport, c.metaAlloc = false, "", false
	c.nc, c.sock = tc, sock
	c.br = bufio.NewReaderSize(tc, 64<<10)
	c.bw = bufio.NewWriterSize(tc, 256<<10)
	c.log.Info("nbd: TLS established", "identity", c.ids)
	return nil
}
