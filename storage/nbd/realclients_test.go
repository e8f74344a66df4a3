package nbd_test

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/internal/testenv"
	"github.com/dataembassy/embassy/storage/nbd"
)

// tlsEnv is a TLS server with a read-write export "disk", a read-only
// export "ro", and a hidden export "secret" nobody in the tests is granted,
// plus certificate directories for the clients.
type tlsEnv struct {
	srv     *runningServer
	pki     *pki
	disk    *nbd.File
	path    string
	rwDir   string // identity "backup-client": rw on disk, ro on ro
	roDir   string // identity spiffe://embassy/reader (URI SAN): ro on disk
	size    int64
}

func newTLSEnv(t *testing.T, size int64) *tlsEnv {
	t.Helper()
	p := newPKI(t)
	disk, path := tempFile(t, size)
	roB, _ := tempFile(t, 1<<20)
	secret, _ := tempFile(t, 1<<20)
	srv := startServer(t, nbd.ServerOptions{
		Exports: []nbd.Export{
			{Name: "disk", Description: "test disk", Backend: disk, MultiConn: true},
			{Name: "ro", Backend: roB, ReadOnly: true},
			{Name: "secret", Backend: secret},
		},
		Grants: []nbd.Grant{
			{Identity: "backup-client", Export: "disk", Access: nbd.ReadWrite},
			{Identity: "backup-client", Export: "ro", Access: nbd.ReadWrite},
			{Identity: "spiffe://embassy/reader", Export: "disk", Access: nbd.ReadOnly},
		},
		TLSConfig: p.serverTLS,
	})
	return &tlsEnv{
		srv: srv, pki: p, disk: disk, path: path, size: size,
		rwDir: p.clientDir(t, p.ca, "backup-client"),
		roDir: p.clientDir(t, p.ca, "someone-else", "spiffe://embassy/reader"),
	}
}

func (e *tlsEnv) uri(export, dir string) string {
	return "nbds://127.0.0.1:" + e.srv.port + "/" + export + "?tls-certificates=" + dir
}

// qemuArgs returns qemu-img/qemu-io options for an NBD image over TLS.
func (e *tlsEnv) qemuImage(export, dir string) []string {
	return []string{"--object", "tls-creds-x509,id=tls0,dir=" + dir + ",endpoint=client",
		"--image-opts", "driver=nbd,host=127.0.0.1,port=" + e.srv.port + ",export=" + export + ",tls-creds=tls0"}
}

// run runs a tool with a deadline and returns its combined output.
func run(t *testing.T, wantOK bool, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.Tool(t, name), args...)
	cmd.Env = testenv.SystemPathEnv()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if wantOK && err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	if !wantOK && err == nil {
		t.Fatalf("%s %s succeeded, want failure\n%s", name, strings.Join(args, " "), out.String())
	}
	return out.String()
}

func TestNbdinfo(t *testing.T) {
	e := newTLSEnv(t, 64<<20)
	out := run(t, true, "nbdinfo", e.uri("disk", e.rwDir))
	t.Log(out)
	for _, want := range []string{"export-size: 67108864", "description: test disk", "block_size_preferred: 4096", "can_multi_conn: true", "is_read_only: false", "can_fua: true", "base:allocation"} {
		if !strings.Contains(out, want) {
			t.Errorf("nbdinfo output lacks %q:\n%s", want, out)
		}
	}
	list := run(t, true, "nbdinfo", "--list", e.uri("", e.rwDir))
	if !strings.Contains(list, "export=\"disk\"") && !strings.Contains(list, "export=disk") {
		t.Errorf("list lacks disk:\n%s", list)
	}
	if strings.Contains(list, "secret") {
		t.Errorf("list shows an export without a grant:\n%s", list)
	}
	if _, err := e.disk.WriteAt(bytes.Repeat([]byte{7}, 1<<20), 8<<20); err != nil {
		t.Fatal(err)
	}
	m := run(t, true, "nbdinfo", "--map", e.uri("disk", e.rwDir))
	// Expect: hole up to 8 MiB, data 8-9 MiB, hole after.
	for _, want := range []string{"0     8388608    3  hole,zero", "8388608     1048576    0  data", "9437184    57671680    3  hole,zero"} {
		if !strings.Contains(strings.Join(strings.Fields(m), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("map lacks %q:\n%s", want, m)
		}
	}
}
