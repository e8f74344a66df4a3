package nbd_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
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
	srv   *runningServer
	pki   *testPKI
	disk  *nbd.File
	path  string
	rwDir string // identity "backup-client": rw on disk, ro on ro
	roDir string // identity spiffe://embassy/reader (URI SAN): ro on disk
	size  int64
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
	// libnbd disconnects with NBD_CMD_DISC and, in its debug output,
	// complains if the TLS session then ends without close_notify.
	debug := run(t, true, "env", "LIBNBD_DEBUG=1", testenv.Tool(t, "nbdinfo"), "--size", e.uri("disk", e.rwDir))
	if !strings.Contains(debug, "connection is using TLS") || strings.Contains(debug, "non-properly terminated") {
		t.Errorf("want a TLS session ended with close_notify; libnbd's debug output:\n%s", debug)
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

func TestQemuImg(t *testing.T) {
	e := newTLSEnv(t, 32<<20)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	data := make([]byte, 32<<20)
	rand.New(rand.NewSource(1)).Read(data[4<<20 : 12<<20]) // data with holes around
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	info := run(t, true, "qemu-img", append([]string{"info"}, e.qemuImage("disk", e.rwDir)...)...)
	if !strings.Contains(info, "virtual size: 32 MiB") {
		t.Errorf("qemu-img info:\n%s", info)
	}
	// file -> NBD
	args := []string{"convert", "-n", "-f", "raw", src,
		"--object", "tls-creds-x509,id=tls0,dir=" + e.rwDir + ",endpoint=client",
		"--target-image-opts", "driver=nbd,host=127.0.0.1,port=" + e.srv.port + ",export=disk,tls-creds=tls0"}
	run(t, true, "qemu-img", args...)
	got, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("export differs from the converted image")
	}
	// NBD -> file
	back := filepath.Join(dir, "back.img")
	run(t, true, "qemu-img", append(append([]string{"convert"}, e.qemuImage("disk", e.rwDir)...), "-O", "raw", back)...)
	got, err = os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("image converted from the export differs")
	}
	cmp := []string{"compare", "--object", "tls-creds-x509,id=tls0,dir=" + e.rwDir + ",endpoint=client", "--image-opts",
		"driver=file,filename=" + src,
		"driver=nbd,host=127.0.0.1,port=" + e.srv.port + ",export=disk,tls-creds=tls0"}
	if out := run(t, true, "qemu-img", cmp...); !strings.Contains(out, "Images are identical") {
		t.Errorf("qemu-img compare: %s", out)
	}
	// One byte changed: compare must notice.
	if _, err := e.disk.WriteAt([]byte{0xff}, 5<<20+3); err != nil {
		t.Fatal(err)
	}
	if out := run(t, false, "qemu-img", cmp...); !strings.Contains(out, "Content mismatch at offset 5242880") {
		t.Errorf("qemu-img compare after change: %s", out)
	}
}

func TestQemuIO(t *testing.T) {
	e := newTLSEnv(t, 16<<20)
	args := append(e.qemuImage("disk", e.rwDir),
		"-c", "write -P 0xab 0 1M",
		"-c", "read -P 0xab 0 1M",
		"-c", "write -P 0x5c 1000 3000", // sub-block, unaligned
		"-c", "read -P 0x5c 1000 3000",
		"-c", "read -P 0xab 0 1000",
		"-c", "write -P 0x11 2M 2M",
		"-c", "discard 2M 1M",
		"-c", "read -P 0 2M 1M",
		"-c", "read -P 0x11 3M 1M",
		"-c", "write -z 3M 512k",
		"-c", "read -P 0 3M 512k",
		"-c", "write -P 0x22 -f 8M 64k", // FUA
		"-c", "flush",
	)
	out := run(t, true, "qemu-io", args...)
	if strings.Contains(out, "fail") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io reported a failure:\n%s", out)
	}
	if n := strings.Count(out, "read "); n != 6 {
		t.Errorf("qemu-io: %d reads reported, want 6:\n%s", n, out)
	}
	got, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 16<<20)
	fill := func(off, n int, b byte) {
		for i := off; i < off+n; i++ {
			want[i] = b
		}
	}
	fill(0, 1<<20, 0xab)
	fill(1000, 3000, 0x5c)
	fill(3<<20+512<<10, 512<<10, 0x11)
	fill(8<<20, 64<<10, 0x22)
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("backing file differs first at %d: %#x, want %#x", i, got[i], want[i])
			}
		}
	}
}

func TestNbdcopyRoundTrip(t *testing.T) {
	const size = 256 << 20
	e := newTLSEnv(t, size)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	data := make([]byte, size)
	rand.New(rand.NewSource(3)).Read(data)
	clear(data[100<<20 : 120<<20]) // a zero run, sent as zeroes or holes
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	run(t, true, "nbdcopy", src, e.uri("disk", e.rwDir))
	dst := filepath.Join(dir, "dst.img")
	run(t, true, "nbdcopy", e.uri("disk", e.rwDir), dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sum {
		t.Fatal("round trip checksum differs")
	}
	back, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(back) != sum {
		t.Fatal("backing file checksum differs")
	}
}

// fioHome makes a HOME holding .pki/libnbd with the client's certificates:
// fio's nbd engine may not name local files in the URI, so libnbd must find
// them in its default place. For root that place is /etc/pki/libnbd, so as
// root fio runs as nobody (setpriv) and the directory is world-readable.
func fioHome(t *testing.T, certDir string) (home string, prefix []string) {
	t.Helper()
	home, err := os.MkdirTemp("", "nbd-fio-home")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	pkiDir := filepath.Join(home, ".pki", "libnbd")
	if err := os.MkdirAll(pkiDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ca-cert.pem", "client-cert.pem", "client-key.pem"} {
		b, err := os.ReadFile(filepath.Join(certDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(pkiDir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{home, filepath.Join(home, ".pki"), pkiDir} {
		os.Chmod(d, 0o777)
	}
	if os.Geteuid() == 0 {
		prefix = []string{testenv.Tool(t, "setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups"}
	}
	return home, prefix
}

func TestFioVerify(t *testing.T) {
	e := newTLSEnv(t, 32<<20)
	home, prefix := fioHome(t, e.rwDir)
	args := append(prefix, testenv.Tool(t, "fio"), "--name=verify", "--ioengine=nbd",
		"--uri=nbds://127.0.0.1:"+e.srv.port+"/disk",
		"--rw=randwrite", "--bs=4k", "--size=16M", "--iodepth=16", "--verify=crc32c",
		"--do_verify=1", "--verify_fatal=1", "--output-format=terse", "--terse-version=3")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir = home
	cmd.Env = append(testenv.SystemPathEnv(), "HOME="+home)
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	if err != nil {
		t.Fatalf("fio: %v\n%s", err, out)
	}
	// Terse v3: field 5 is the error code; field 6 the KiB read (verify
	// reads back everything written).
	i := strings.LastIndex(out, "3;fio")
	if i < 0 {
		t.Fatalf("no terse output:\n%s", out)
	}
	fields := strings.Split(strings.TrimSpace(out[i:]), ";")
	if len(fields) < 50 || fields[4] != "0" || fields[5] != "16384" {
		t.Fatalf("fio terse output: error %q, read KiB %q, want 0 and 16384:\n%s", fields[4], fields[5], out)
	}
	if !strings.Contains(e.srv.logs.String(), "identity=[backup-client]") {
		t.Error("fio did not connect with its certificate identity")
	}
}

func TestRefusals(t *testing.T) {
	e := newTLSEnv(t, 1<<20)
	cases := []struct {
		name, uri, log string
	}{
		{"no client certificate", e.uri("disk", e.pki.clientDir(t, nil, "")), "TLS handshake failed"},
		{"certificate from another CA", e.uri("disk", e.pki.clientDir(t, e.pki.otherCA, "backup-client")), "TLS handshake failed"},
		{"no grant", e.uri("secret", e.rwDir), "no grant for export"},
		{"no grant for a read-only identity", e.uri("ro", e.roDir), "no grant for export"},
		{"no TLS", "nbd://127.0.0.1:" + e.srv.port + "/disk", "option before TLS"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.srv.Stats().Refused
			run(t, false, "nbdinfo", tc.uri)
			// The client may exit before the server has finished its side of
			// a failed handshake: give the server a moment to count and log.
			counted := func() bool {
				return e.srv.Stats().Refused != before && strings.Contains(e.srv.logs.String(), "refused: "+tc.log)
			}
			for deadline := time.Now().Add(5 * time.Second); !counted() && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
			if e.srv.Stats().Refused == before {
				t.Error("refusal not counted")
			}
			if !strings.Contains(e.srv.logs.String(), "refused: "+tc.log) {
				t.Errorf("log lacks refusal %q:\n%s", tc.log, e.srv.logs.String())
			}
		})
	}
}

// nbdshScript checks edge cases with libnbd's Python binding. Strict mode
// is off so libnbd sends what it would otherwise refuse client-side, and
// the server's own answers are tested. It prints OK at the end.
const nbdshScript = `
import errno, os
uri, ro_uri = os.environ["NBD_URI"], os.environ["NBD_RO_URI"]

def expect_err(what, want, f, *a):
    try:
        f(*a)
    except nbd.Error as e:
        if e.errnum != want:
            raise SystemExit("%s: errno %s, want %s" % (what, e.errnum, want))
        return
    raise SystemExit("%s: succeeded, want errno %d" % (what, want))

h = nbd.NBD()
h.set_strict_mode(0)
h.add_meta_context("base:allocation")
h.set_uri_allow_local_file(True)
h.connect_uri(uri)
size = h.get_size()

# Out of range.
expect_err("read past end", errno.EINVAL, h.pread, 4096, size - 1024)
expect_err("write past end", errno.ENOSPC, h.pwrite, b"x" * 4096, size - 1024)
expect_err("trim past end", errno.EINVAL, h.trim, 8192, size)
expect_err("zero past end", errno.ENOSPC, h.zero, 4096, size)
expect_err("block status past end", errno.EINVAL, h.block_status, 4096, size, lambda *a: 0)
expect_err("read offset overflow", errno.EINVAL, h.pread, 4096, 2**63 - 1)

# Zero length requests succeed and change nothing.
assert h.pread(0, 0) == b""
h.pwrite(b"", 0)
h.flush()

# FUA write, and read it back on a second connection.
h.pwrite(b"\xa5" * 8192, 65536, nbd.CMD_FLAG_FUA)
h2 = nbd.NBD()
h2.set_uri_allow_local_file(True)
h2.connect_uri(uri)
assert h2.pread(8192, 65536) == b"\xa5" * 8192
assert h2.pread(300, 65536 + 8000) == b"\xa5" * 192 + b"\0" * 108
h2.shutdown()

# Block status after trim: data, then a hole.
h.pwrite(b"\x01" * 65536, 1 << 20)
got = []
def cb(meta, off, entries, err):
    got.append((meta, off, list(entries)))
    return 0
h.block_status(65536, 1 << 20, cb)
assert got[0][0] == "base:allocation" and got[0][2][1] == 0, got
h.trim(65536, 1 << 20)
got.clear()
h.block_status(65536, 1 << 20, cb)
assert got[0][2][0] == 65536 and got[0][2][1] == 3, got
assert h.pread(65536, 1 << 20) == b"\0" * 65536
got.clear()
h.block_status(65536, 1 << 20, cb, nbd.CMD_FLAG_REQ_ONE)
assert len(got[0][2]) == 2, got

# Zeroing with NO_HOLE and FAST_ZERO.
h.pwrite(b"\x02" * 8192, 2 << 20)
h.zero(8192, 2 << 20, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(8192, 2 << 20) == b"\0" * 8192
h.pwrite(b"\x03" * 8192, 2 << 20)
h.zero(8192, 2 << 20, nbd.CMD_FLAG_FAST_ZERO)
assert h.pread(8192, 2 << 20) == b"\0" * 8192

# Sub-block, unaligned write between data.
h.pwrite(b"\x04" * 4096, 3 << 20)
h.pwrite(b"\x05" * 10, (3 << 20) + 511)
b = h.pread(4096, 3 << 20)
assert b[:511] == b"\x04" * 511 and b[511:521] == b"\x05" * 10 and b[521:] == b"\x04" * (4096 - 521)

# Cache is accepted.
h.cache(1 << 20, 0)

# Unknown command flags are refused without desynchronising.
expect_err("flush with FUA flag", errno.EINVAL, h.flush, nbd.CMD_FLAG_FUA)
assert h.pread(8192, 65536) == b"\xa5" * 8192
h.shutdown()

# Read-only access: writes, trims and zeroing fail with EPERM.
r = nbd.NBD()
r.set_strict_mode(0)
r.set_uri_allow_local_file(True)
r.connect_uri(ro_uri)
assert r.is_read_only()
expect_err("write read-only", errno.EPERM, r.pwrite, b"x" * 4096, 0)
expect_err("trim read-only", errno.EPERM, r.trim, 4096, 0)
expect_err("zero read-only", errno.EPERM, r.zero, 4096, 0)
assert r.pread(8192, 65536) == b"\xa5" * 8192
r.shutdown()
print("OK")
`

func TestNbdshEdgeCases(t *testing.T) {
	e := newTLSEnv(t, 16<<20)
	script := filepath.Join(t.TempDir(), "edge.py")
	if err := os.WriteFile(script, []byte(nbdshScript), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NBD_URI", e.uri("disk", e.rwDir))
	t.Setenv("NBD_RO_URI", e.uri("disk", e.roDir))
	out := run(t, true, "nbdsh", "-c", "exec(open('"+script+"').read())")
	if !strings.HasSuffix(strings.TrimSpace(out), "OK") {
		t.Fatalf("nbdsh script did not finish:\n%s", out)
	}
}
