#!/usr/bin/env bash
# bench-nbd.sh compares Embassy's NBD server with nbdkit using fio's nbd
# engine, side by side in one run: 1 MiB sequential write/read at QD8 and
# 4 KiB random write/read at QD32 against
#   - embassyctl serve on a plain file, with and without TLS
#   - embassyctl serve on the authenticated store (when the CLI supports it)
#   - nbdkit file, with and without TLS
#   - nbdkit file --filter=luks (LUKS1, aes-xts-plain64), with and without TLS
# It prints one table with ratios and writes it to docs/performance-nbd.md.
#
# Environment: RUNTIME (seconds per fio job, default 6), ROUNDS (default 3;
# cells are medians over rounds, as single runs swing on a shared
# machine), SIZE (default 1G), SERVERS (space-separated server names to
# run, e.g. "nbdkit-file embassy-file"; default all), FIO_JOBS
# (space-separated fio rw names among write read randwrite randread; default
# all), PROFILE_DIR (if set, each embassyctl writes a CPU profile there,
# <server>.pprof, when it stops). With SERVERS or FIO_JOBS set the table is
# only printed unless OUT is given.
# BENCH_DIR (scratch directory, default a new one under /tmp), OUT (the
# markdown file to write).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNTIME=${RUNTIME:-6}
SIZE=${SIZE:-1G}
if [[ -n ${SERVERS:-}${FIO_JOBS:-} ]]; then OUT=${OUT:-/dev/null}; fi
OUT=${OUT:-$ROOT/docs/performance-nbd.md}
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
PY=/usr/bin/python3

for tool in fio nbdkit qemu-img openssl nbdinfo; do
  command -v "$tool" >/dev/null || { echo "bench-nbd: $tool missing (run scripts/install-deps.sh)" >&2; exit 1; }
done

WORK=${BENCH_DIR:-$(mktemp -d /tmp/nbd-bench.XXXXXX)}
mkdir -p "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  [[ -n ${BENCH_DIR:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT

echo "bench-nbd: building embassyctl"
CGO_ENABLED=0 go build -trimpath -o "$WORK/embassyctl" ./cmd/embassyctl

echo "bench-nbd: making $SIZE backing files in $WORK"
# nbdkit-file and embassy-file (with and without TLS) serve this one file:
# how a file's page cache was filled and how much of it is dirty or under
# writeback changes the cost of every request (the same server, same job,
# measured 1.4x more CPU per GiB on a file written by head than on one
# written by cp), so two files would compare the files, not the servers.
head -c "$SIZE" /dev/urandom > "$WORK/plain.img"
# qemu-img times PBKDF2 iterations by thread CPU time and gives up ("Unable
# to get accurate CPU usage") when a first batch measures 0 ms, which
# happens now and then here; a second attempt succeeds. The image is
# allocated in full (falloc), as `embassyctl serve --format` allocates
# the store's file: a first write into a hole costs the server more.
for try in 1 2 3; do
  qemu-img create -q -f luks --object secret,id=sec0,data=benchpass -o key-secret=sec0,preallocation=falloc "$WORK/luks.img" "$SIZE" && break
  [[ $try -lt 3 ]] || exit 1
done

# PKI: one CA; server and client certificates (ECDSA P-256).
PKI=$WORK/pki; mkdir -p "$PKI/server" "$PKI/client"
(
  cd "$PKI"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout ca-key.pem -out ca-cert.pem -subj "/CN=bench CA" 2>/dev/null
  leaf() { # name cn ext
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1-key.pem" \
      -out "$1.csr" -subj "/CN=$2" 2>/dev/null
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
      -days 2 -out "$1-cert.pem" -extfile "$1.ext" 2>/dev/null
  }
  leaf server localhost "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
  leaf client bench-client "extendedKeyUsage=clientAuth"
  cp ca-cert.pem server/; cp server-cert.pem server-key.pem server/
  cp ca-cert.pem client/; cp client-cert.pem client-key.pem client/
)
# fio's nbd engine may not name certificate files in the URI; libnbd finds
# them in $HOME/.pki/libnbd, but only for non-root users, so as root fio
# runs as nobody.
FIOHOME=$WORK/fiohome
mkdir -p "$FIOHOME/.pki/libnbd"
cp "$PKI/client/"*.pem "$FIOHOME/.pki/libnbd/"
chmod -R a+rwX "$FIOHOME"; chmod a+r "$FIOHOME/.pki/libnbd/"*
chmod a+x "$WORK"
FIOPREFIX=()
if [[ $(id -u) -eq 0 ]]; then FIOPREFIX=(setpriv --reuid=65534 --regid=65534 --clear-groups); fi

port=10900
# want NAME: whether server NAME was selected by SERVERS.
want() { [[ -z ${SERVERS:-} || " $SERVERS " == *" $1 "* ]]; }
wait_port() { # port pid
  for _ in $(seq 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || { echo "bench-nbd: server exited" >&2; return 1; }
    sleep 0.1
  done
  echo "bench-nbd: server on $1 did not start" >&2; return 1
}
stop_server() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

RESULTS=$WORK/results.tsv
: > "$RESULTS"
NAMES=(); URIS=(); SPIDS=()

# start_embassy NAME TLS(0|1) SERVE-ARGS...: starts a server and records it.
start_embassy() {
  local name=$1 tls=$2; shift 2
  port=$((port+1))
  want "$name" || return 1
  local tlsargs=(--plaintext) scheme=nbd
  if [[ $tls == 1 ]]; then
    tlsargs=(--tls-cert "$PKI/server-cert.pem" --tls-key "$PKI/server-key.pem" --client-ca "$PKI/ca-cert.pem" --grant "bench-client=disk:rw")
    scheme=nbds
  fi
  [[ -n ${PROFILE_DIR:-} ]] && tlsargs+=(--cpuprofile "$PROFILE_DIR/$name.pprof")
  "$WORK/embassyctl" serve --listen 127.0.0.1:$port --export disk "${tlsargs[@]}" "$@" > "$WORK/$name.log" 2>&1 &
  PIDS+=("$!")
  wait_port $port $!
  NAMES+=("$name"); URIS+=("$scheme://127.0.0.1:$port/disk"); SPIDS+=("$!")
}

# start_nbdkit NAME TLS(0|1) NBDKIT-ARGS...
start_nbdkit() {
  local name=$1 tls=$2; shift 2
  port=$((port+1))
  want "$name" || return 0
  local tlsargs=(--tls=off) scheme=nbd
  if [[ $tls == 1 ]]; then
    tlsargs=(--tls=require --tls-certificates="$PKI/server" --tls-verify-peer)
    scheme=nbds
  fi
  nbdkit -f -i 127.0.0.1 -p $port -e disk "${tlsargs[@]}" "$@" > "$WORK/$name.log" 2>&1 &
  PIDS+=("$!")
  wait_port $port $!
  NAMES+=("$name"); URIS+=("$scheme://127.0.0.1:$port/disk"); SPIDS+=("$!")
}

head -c 32 /dev/urandom > "$WORK/kek"
for tls in 0 1; do
  sfx=""; [[ $tls == 1 ]] && sfx="-tls"
  start_nbdkit "nbdkit-file$sfx" $tls file "$WORK/plain.img"
  start_nbdkit "nbdkit-luks$sfx" $tls --filter=luks file "$WORK/luks.img" passphrase=benchpass
  # A store per server process (a store is opened by one process at a
  # time), filled with the same random data as the plain file so reads
  # decrypt and authenticate real blocks (unwritten blocks read as zeros
  # without touching ciphertext).
  start_embassy "embassy-file$sfx" $tls --file "$WORK/plain.img" || true
  if start_embassy "embassy-store$sfx" $tls --store "$WORK/store$sfx.img" --format "$SIZE" \
    --kek "$WORK/kek" --counter "$WORK/counter$sfx"; then
    echo "bench-nbd: filling embassy-store$sfx"
    (cd "$FIOHOME" && "${FIOPREFIX[@]}" env HOME="$FIOHOME" nbdcopy "$WORK/plain.img" "${URIS[-1]}")
  fi
done
[[ ${#NAMES[@]} -gt 0 ]] || { echo "bench-nbd: SERVERS selects no server" >&2; exit 1; }

# cpu_ticks PID: the process's user+system CPU time in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# fio_one URI JOB PID: prints MiB/s (1M jobs) or IOPS (4k jobs), then the
# server's CPU time per request in microseconds. The CPU time spans ramp
# and run; it is divided by the requests done in the run scaled up by
# (ramp+run)/run, which assumes a steady rate.
fio_one() {
  local uri=$1 pid=$3; set -- $2
  local json=$WORK/fio.json c0 c1
  # Every job starts from a clean page cache, so no server pays for
  # another's dirty pages being written back during its run.
  sync
  c0=$(cpu_ticks "$pid")
  (cd "$FIOHOME" && "${FIOPREFIX[@]}" env HOME="$FIOHOME" fio --name="$1" --ioengine=nbd --uri="$uri" \
    --rw="$1" --bs="$2" --iodepth="$3" --size="$SIZE" --time_based --runtime="$RUNTIME" \
    --ramp_time=1 --output-format=json > "$json")
  c1=$(cpu_ticks "$pid")
  $PY -c '
import json,sys,os
t=open(sys.argv[1]).read()
j=json.loads(t[t.index("{"):])["jobs"][0]
if j["error"]: sys.exit("fio error %d" % j["error"])
side=j["read"] if "read" in sys.argv[2] else j["write"]
v=side["bw"]/1024.0 if sys.argv[3]=="1M" else side["iops"]
runtime=float(sys.argv[6])
ios=side["total_ios"]*(runtime+1)/runtime
cpu_us=(int(sys.argv[5])-int(sys.argv[4]))*1e6/os.sysconf("SC_CLK_TCK")
print("%.0f\t%.1f" % (v, cpu_us/ios if ios else float("nan")))
' "$json" "$1" "$2" "$c0" "$c1" "$RUNTIME"
}

# Job-major and round-robin over the servers, ROUNDS times, in reverse
# order every other round: load from other processes on the machine then
# hits every server alike, and no server always runs right after another.
# Each cell is the median over the rounds.
ROUNDS=${ROUNDS:-3}
JOBS=("write 1M 8" "read 1M 8" "randwrite 4k 32" "randread 4k 32")
WANTJOBS=${FIO_JOBS:-}
for ((r = 1; r <= ROUNDS; r++)); do
  for ((j = 0; j < ${#JOBS[@]}; j++)); do
    if [[ -n $WANTJOBS && " $WANTJOBS " != *" ${JOBS[$j]%% *} "* ]]; then continue; fi
    for ((k = 0; k < ${#NAMES[@]}; k++)); do
      i=$k; ((r % 2)) || i=$((${#NAMES[@]} - 1 - k))
      v=$(fio_one "${URIS[$i]}" "${JOBS[$j]}" "${SPIDS[$i]}")
      printf '%s\t%d\t%s\n' "${NAMES[$i]}" "$j" "$v" >> "$RESULTS"
      echo "bench-nbd: round $r ${JOBS[$j]%% *} ${NAMES[$i]}: ${v//$'\t'/, CPU µs\/request }"
    done
  done
done

$PY - "$RESULTS" "$OUT" "$RUNTIME" "$SIZE" <<'PYEOF'
import sys, datetime, platform, os
res, out, runtime, size = sys.argv[1:5]
import statistics
NOTES = """
Notes: `embassy-file` is `embassyctl serve --file`, `embassy-store` is
`embassyctl serve --store` (AES-256-GCM per 4 KiB block, hash tree),
both on the same loopback as fio. Per connection, one reader goroutine
reads requests. On the plain file it serves cached reads (preadv2
RWF_NOWAIT) and whole-page writes itself, with no goroutine hand-off;
everything else, and every store request, goes to one of QueueDepth
workers, which writes its own reply (gathered with other finished
replies into one writev; large read payloads are not copied). Under TLS
the socket is read through a 256 KiB buffer and the records of one flush
leave in writes of 256 KiB. The server caps each connection's send buffer
at twice the bandwidth-delay product of a 100 Gbit/s link at the
connection's minimum RTT, at least 1 MiB (docs/nbd-protocol.md, "Send
buffer"); nbdkit leaves it to autotuning. Over TLS it also keeps at
most 64 KiB unsent in the socket (TCP_NOTSENT_LOWAT). The reader leaves
its replies unflushed while the next whole request is already buffered,
so a burst of small requests is answered in one write. Socket reads and
writes and the cached-page preadv2 are raw system calls, which do not
wake the Go runtime's monitor thread (docs/performance.md, "Small
requests").

Method: nbdkit-file and embassy-file (with and without TLS) serve the
same file, since the page-cache state of a file (how it was written,
what is dirty or under writeback) changed the same server's CPU per GiB
by up to 1.4x; the store's file and the LUKS image are allocated in
full, as writes into holes cost more; every job starts after `sync`;
every other round visits the servers in reverse order. The `ceiling`
rows divide nbdkit-file by nbdkit-luks: a server that encrypts cannot beat one that does not with
the same client, so the ceiling bounds embassy-store / nbdkit-luks.
With TLS, fio's own TLS (GnuTLS, one thread) limits every server; there
the ceiling can fall below 3x. Profiles (`PROFILE_DIR=dir` for Go CPU profiles;
`perf record -g -p PID`) show the server's time in system calls and,
in the kernel, in thread switches, which are costly on this VM: fewer
goroutine hand-offs lowered CPU per byte far more than fewer copies did
(sendfile for reads was tried and did not lower it). On this 2-core
machine fio, the server and other jobs compete for the cores, so single
runs swing by 2x; hence the default of 3 rounds, and more for
decisions. Go benchmarks (in-process client, for regressions): `go test
./storage/nbd -run '^$' -bench .`.
"""
vals = {}
cpus = {}
order = []
for line in open(res):
    name, job, v, cpu = line.rstrip("\n").split("\t")
    if name not in vals:
        vals[name] = [[], [], [], []]
        cpus[name] = [[], [], [], []]
        order.append(name)
    vals[name][int(job)].append(float(v))
    cpus[name][int(job)].append(float(cpu))
rows = {n: [statistics.median(x) if x else float("nan") for x in vals[n]] for n in order}
crows = {n: [statistics.median(x) if x else float("nan") for x in cpus[n]] for n in order}
rounds = max(len(x) for n in order for x in vals[n])
cols = ["seq write MiB/s", "seq read MiB/s", "4K randwrite IOPS", "4K randread IOPS"]
lines = []
lines.append("## NBD")
lines.append("")
lines.append("Measured by `make bench` (scripts/bench-nbd.sh) on %s, %d CPUs, %s UTC: fio's nbd engine over loopback, "
             "%s s per job after 1 s ramp, %s backing files; 1 MiB sequential at QD8, 4 KiB random at QD32. "
             "All servers run side by side; each job visits them in turn, %d round(s), median shown. "
             "The machine is shared, so compare ratios, not absolute numbers."
             % (platform.node(), os.cpu_count(), datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"), runtime, size, rounds))
lines.append("")
lines.append("| server | " + " | ".join(cols) + " |")
lines.append("|---|" + "---:|" * len(cols))
for n in order:
    lines.append("| %s | %s |" % (n, " | ".join("%.0f" % v if v == v else "-" for v in rows[n])))
lines.append("")
lines.append("Ratios (higher is better for us):")
lines.append("")
lines.append("| ratio | " + " | ".join(cols) + " |")
lines.append("|---|" + "---:|" * len(cols))
def ratio(table, a, b, label=""):
    if a in table and b in table:
        lines.append("| %s%s / %s | %s |" % (label, a, b, " | ".join("%.2fx" % (x / y) if x == x and y == y and y else "-" for x, y in zip(table[a], table[b]))))
for sfx in ["", "-tls"]:
    ratio(rows, "embassy-file" + sfx, "nbdkit-file" + sfx)
    ratio(rows, "embassy-store" + sfx, "nbdkit-file" + sfx)
    ratio(rows, "embassy-store" + sfx, "nbdkit-luks" + sfx)
    # No server that encrypts beats one that does not with the same
    # client: this bounds the row above.
    ratio(rows, "nbdkit-file" + sfx, "nbdkit-luks" + sfx, "ceiling: ")
lines.append("")
lines.append("Server CPU time per request, microseconds (lower is better; medians; user+system of the "
             "server process, so fio's own CPU is not in it). On a loaded machine this is steadier than "
             "throughput:")
lines.append("")
lines.append("| server | " + " | ".join(["seq write", "seq read", "4K randwrite", "4K randread"]) + " |")
lines.append("|---|" + "---:|" * len(cols))
for n in order:
    lines.append("| %s | %s |" % (n, " | ".join("%.1f" % v if v == v else "-" for v in crows[n])))
lines.append("")
lines.append("CPU per request relative to the peer (lower is better for us):")
lines.append("")
lines.append("| ratio | " + " | ".join(["seq write", "seq read", "4K randwrite", "4K randread"]) + " |")
lines.append("|---|" + "---:|" * len(cols))
for sfx in ["", "-tls"]:
    ratio(crows, "embassy-file" + sfx, "nbdkit-file" + sfx)
    ratio(crows, "embassy-store" + sfx, "nbdkit-luks" + sfx)
lines.append("")
lines.append("Targets: embassy-file >= 0.9x nbdkit-file; embassy-store 4K randread >= 0.7x nbdkit-file "
             "and sequential >= 3x nbdkit-luks.")
lines.append("")
lines.append(NOTES.strip())
text = "\n".join(lines) + "\n"
print(text)
open(out, "w").write("# Performance: NBD server\n\n" + text)
PYEOF
echo "bench-nbd: wrote $OUT"
