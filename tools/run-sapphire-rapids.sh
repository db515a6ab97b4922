#!/usr/bin/env bash
# run-sapphire-rapids.sh [NAME=VALUE...] PROGRAM [ARGS...]
# Runs a statically linked x86-64 PROGRAM (NAME=VALUE words go into its
# environment, as with env(1)) on an emulated Intel Sapphire Rapids CPU
# (Bochs 3.0, `cpu: model=sapphire_rapids`: AVX-512F/BW/VL/DQ, AVX512-FP16,
# BF16, VNNI...) under a Linux kernel, prints its stdout+stderr and exits
# with its exit status.
# It exists to test the AVX512-FP16 kernels on machines without them (no
# development or CI machine here has AVX512-FP16, and qemu does not emulate
# AVX-512). Nothing third-party is kept in this repository: on first use it
# fetches from Debian's archive (trixie, through a private apt root; the
# mirror is the one this machine's /etc/apt names) and builds into
# build/sapphire-rapids/ (git-ignored, override with SR_CACHE):
#   - the bochs source package, built headless (nogui, x86-64, AVX, EVEX,
#     AMX) with make -j2: 60-130 s on this 2-core machine, once;
#   - bochsbios and vgabios (BIOS images), isolinux and syslinux-common
#     (El Torito boot loader), linux-image-cloud-amd64 (the kernel, 6.12);
#   - pycdlib from PyPI (pure Python; writes the ISO);
#   - tools/sapphire_rapids_init.c, compiled static with gcc (the /init).
# Each run then writes an initramfs (/init, /prog = PROGRAM, /env, /args), an
# ISO into a temporary folder and boots it headless with the serial console
# in a file. Measured on this machine: first use (fetch + build) 80-145 s;
# then BIOS + kernel boot to the program about 7.5 s of wall time. Guest
# speed: about 125 M scalar integer instructions/s, about 5.6 M 512-bit
# VFMADD*PS/s and 3.2 M 512-bit VFMADD*PH/s (~100 M fp16 lanes/s), so vector
# code runs some hundreds of times slower than natively: size tests to that.
# A static test_kernels (-DCMAKE_EXE_LINKER_FLAGS=-static) with
# QUAKE_TEST_QUICK=1 takes 275 s here (627 checks, 2026-12-01; 206 s before
# that day's float16 tests) against about 4 s natively, with output
# identical to a native AVX-512 run; `test_kernels half-lanes` runs in about
# 45 s (tools/test-sapphire-rapids.sh). Another emulator or build on the
# same 2 cores can more than double these times.
#
# Needs: bash, apt-get + dpkg (Debian), gcc/g++/make, python3 with pip,
# readelf, network access to the Debian archive and PyPI on first use (or a
# filled cache). PROGRAM must be statically linked (gcc -static); a dynamic
# one is refused. Its stdin is the console; it runs as root in / with PATH=/.
#
# Environment: SR_TIMEOUT (seconds of wall time for the whole boot+run,
# default 600), SR_MEGS (guest memory in MiB, default 1024), SR_IPS (guest
# instructions per emulated second, default 50000000: the guest's clocks
# and rdtsc count emulated time, not wall time), SR_VERBOSE=1 (kernel log
# and Bochs' paths to stderr), SR_CACHE (cache folder), SR_KEEP=1 (keep the
# run folder). Exit status: the program's (128+signal if killed by one),
# 124 on timeout, 125 when the emulator or the kernel failed before the
# program reported its status, 2 on bad usage.
#
# The kernel runs with no5lvl (Bochs 3.0 cannot restore CR4.LA57 from SMM)
# and clearcpuid=amx_* (Bochs has no XFD, so Linux drops XTILEDATA but keeps
# XTILECFG in XCR0, and XSETBV faults at boot); CPUID still reports AMX,
# XCR0 has no tile state. Bochs is built without show-ips (see below).
set -euo pipefail
main() {

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in -h | --help) usage ;; esac
guest_env=()
while [ $# -ge 1 ] && [[ $1 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; do guest_env+=("$1"); shift; done
[ $# -ge 1 ] || usage
prog=$1
shift
[ -f "$prog" ] || { echo "run-sapphire-rapids: no such file: $prog" >&2; exit 2; }
if ! readelf -h "$prog" 2>/dev/null | grep -q 'Machine:.*X86-64'; then
  echo "run-sapphire-rapids: $prog is not an x86-64 ELF program" >&2; exit 2
fi
if readelf -l "$prog" 2>/dev/null | grep -q 'program interpreter'; then
  echo "run-sapphire-rapids: $prog is dynamically linked; link it with -static" >&2; exit 2
fi

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${SR_CACHE:-$repo/build/sapphire-rapids}
timeout_s=${SR_TIMEOUT:-600}
megs=${SR_MEGS:-1024}
ips=${SR_IPS:-50000000}
verbose=${SR_VERBOSE:-0}
suite=trixie
pycdlib_version=1.22.0
mkdir -p "$cache"
log() { echo "run-sapphire-rapids: $*" >&2; }
t0=$(date +%s.%N)

# --- private apt root on Debian trixie --------------------------------------
debian_uri() {
  local f l
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    for l in $(sed -n 's/^URIs:[[:space:]]*//p' "$f"); do
      [[ $l =~ ^[a-z]+://[^[:space:]]*/debian/?$ ]] && { echo "${l%/}"; return; }
    done
  done
  if [ -f /etc/apt/sources.list ]; then
    l=$(grep -Eo '^deb +(\[[^]]*\] +)?[a-z]+://[^ ]*/debian/? ' /etc/apt/sources.list | head -1 | awk '{print $NF}')
    [ -n "$l" ] && { echo "${l%/}"; return; }
  fi
  return 1
}
apt_root=$cache/apt
apt_opts=(-o "Dir::Etc::SourceList=$apt_root/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$apt_root/lists" -o "Dir::Cache=$apt_root/cache"
  -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root" -q)
apt_ready=0
apt_update() {
  [ $apt_ready = 1 ] && return
  local uri
  uri=$(debian_uri) || { log "no Debian archive entry in /etc/apt to fetch from"; exit 125; }
  mkdir -p "$apt_root/lists/partial" "$apt_root/cache/archives/partial"
  printf 'deb %s %s main\ndeb-src %s %s main\n' "$uri" $suite "$uri" $suite >"$apt_root/sources.list"
  log "apt-get update ($suite, private root $apt_root)"
  apt-get "${apt_opts[@]}" update >"$apt_root/update.log" 2>&1 || {
    cat "$apt_root/update.log" >&2; exit 125; }
  apt_ready=1
}
# fetch_deb PACKAGE: unpacks Debian's PACKAGE into $cache/root (once).
fetch_deb() {
  local pkg=$1 stamp=$cache/root/.got-$1
  [ -f "$stamp" ] && return
  apt_update
  mkdir -p "$cache/deb" "$cache/root"
  rm -f "$cache/deb/${pkg}"_*.deb
  (cd "$cache/deb" && apt-get "${apt_opts[@]}" download "$pkg" >&2)
  dpkg -x "$cache/deb/${pkg}"_*.deb "$cache/root"
  touch "$stamp"
}

# --- Bochs ------------------------------------------------------------------
# No show-ips: its SIGALRM handler logs from signal context and deadlocks
# Bochs when the signal lands inside another log write (seen after minutes).
bochs_flags="--with-nogui --enable-x86-64 --enable-cpu-level=6 --enable-avx --enable-evex
  --enable-amx --enable-all-optimizations --enable-cdrom --enable-pci --disable-plugins
  --enable-repeat-speedups --enable-fast-function-calls --disable-docbook --disable-debugger
  --enable-a20-pin --disable-show-ips"
bochs=$cache/bin/bochs
if [ ! -x "$bochs" ] || [ "$(cat "$bochs.flags" 2>/dev/null)" != "$bochs_flags" ]; then
  apt_update
  src=$cache/src
  rm -rf "$src" && mkdir -p "$src"
  log "fetching the bochs source package"
  # The .dsc may be refused by the mirror; the tarballs are checked by apt
  # against the signed Sources index all the same.
  (cd "$src" && apt-get "${apt_opts[@]}" source --download-only bochs >&2) || true
  orig=$(ls "$src"/bochs_*.orig.tar.* 2>/dev/null | head -1)
  [ -n "$orig" ] || { log "could not fetch the bochs source"; exit 125; }
  tar -xf "$orig" -C "$src"
  dir=$(ls -d "$src"/bochs-*/ | head -1)
  log "building $(basename "$orig") (configure + make -j2, 1-2 minutes)"
  b0=$SECONDS
  (cd "$dir" &&
    ./configure $bochs_flags >"$src/configure.log" 2>&1 &&
    make -j2 >"$src/make.log" 2>&1) || {
    log "bochs build failed; see $src/configure.log and $src/make.log"; tail -20 "$src/make.log" >&2; exit 125; }
  mkdir -p "$cache/bin"
  cp "$dir/bochs" "$bochs.tmp" && mv "$bochs.tmp" "$bochs"
  echo "$bochs_flags" >"$bochs.flags"
  log "bochs built in $((SECONDS - b0)) s"
fi

# --- BIOS, boot loader, kernel ------------------------------------------------
fetch_deb bochsbios
fetch_deb vgabios
fetch_deb isolinux
fetch_deb syslinux-common
if [ ! -f "$cache/root/.got-kernel" ]; then
  apt_update
  kpkg=$(apt-cache "${apt_opts[@]}" depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[^ ]*\).*/\1/p' | head -1)
  [ -n "$kpkg" ] || { log "cannot resolve linux-image-cloud-amd64"; exit 125; }
  log "kernel package $kpkg"
  fetch_deb "$kpkg"
  touch "$cache/root/.got-kernel"
fi
vmlinuz=$(ls "$cache"/root/boot/vmlinuz-* | sort -V | tail -1)
romimage=$cache/root/usr/share/bochs/BIOS-bochs-latest
vgarom=$cache/root/usr/share/vgabios/vgabios.bin
isolinux=$cache/root/usr/lib/ISOLINUX/isolinux.bin
ldlinux=$cache/root/usr/lib/syslinux/modules/bios/ldlinux.c32
for f in "$vmlinuz" "$romimage" "$vgarom" "$isolinux" "$ldlinux"; do
  [ -f "$f" ] || { log "missing $f"; exit 125; }
done

# --- pycdlib and /init --------------------------------------------------------
wheel=$(ls "$cache"/py/pycdlib-$pycdlib_version-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  log "fetching pycdlib $pycdlib_version from PyPI"
  python3 -m pip download -q --no-deps "pycdlib==$pycdlib_version" -d "$cache/py" >&2
  wheel=$(ls "$cache"/py/pycdlib-$pycdlib_version-*.whl | head -1)
fi
init=$cache/bin/sr-init
if [ ! -x "$init" ] || [ "$here/sapphire_rapids_init.c" -nt "$init" ]; then
  mkdir -p "$cache/bin"
  gcc -O2 -static -o "$init" "$here/sapphire_rapids_init.c"
fi

# --- one run --------------------------------------------------------------------
run=$(mktemp -d "${TMPDIR:-/tmp}/sapphire-rapids.XXXXXX")
bochs_pid=
cleanup() {
  [ -n "$bochs_pid" ] && kill "$bochs_pid" 2>/dev/null || true
  [ "${SR_KEEP:-0}" = 1 ] && log "run folder kept: $run" || rm -rf "$run"
}
trap cleanup EXIT
loglevel=1
[ "$verbose" = 1 ] && loglevel=7
cmdline="console=ttyS0,115200 loglevel=$loglevel panic=0 no5lvl mitigations=off clearcpuid=amx_tile,amx_int8,amx_bf16"
PYTHONPATH=$wheel python3 "$here/sapphire_rapids_image.py" "$run/boot.iso" "$vmlinuz" \
  "$isolinux" "$ldlinux" "$init" "$prog" "$cmdline" ${guest_env[@]+"${guest_env[@]}"} -- "$@"
cat >"$run/bochsrc" <<EOF
megs: $megs
romimage: file=$romimage
vgaromimage: file=$vgarom
cpu: model=sapphire_rapids, count=1, ips=$ips, reset_on_triple_fault=0
pci: enabled=1, chipset=i440fx
ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14
ata0-master: type=cdrom, path=$run/boot.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$run/serial.out
display_library: nogui
log: $run/bochs.log
panic: action=fatal
error: action=report
info: action=report
debug: action=ignore
clock: sync=none, time0=946684800
EOF
: >"$run/serial.out"
[ "$verbose" = 1 ] && log "bochs $bochs, config $run/bochsrc"
"$bochs" -q -f "$run/bochsrc" >"$run/bochs.out" 2>&1 </dev/null &
bochs_pid=$!
t_boot=$(date +%s.%N)
t_begin=
status=
deadline=$((SECONDS + timeout_s))
while :; do
  if [ -z "$t_begin" ] && grep -q '@@SR-BEGIN@@' "$run/serial.out"; then t_begin=$(date +%s.%N); fi
  code=$(grep -ao '@@SR-EXIT [0-9]*@@' "$run/serial.out" | head -1 | tr -dc 0-9 || true)
  if [ -n "$code" ]; then status=$code; break; fi
  if grep -aq '\] Kernel panic - not syncing' "$run/serial.out"; then status=panic; break; fi
  if ! kill -0 "$bochs_pid" 2>/dev/null; then sleep 0.2; status=died; break; fi
  if [ $SECONDS -ge $deadline ]; then status=timeout; break; fi
  sleep 0.2
done
t_end=$(date +%s.%N)
# Bochs quits by itself on the shutdown port; give it a moment, then stop it.
if [[ $status =~ ^[0-9]+$ ]]; then
  for _ in $(seq 50); do kill -0 "$bochs_pid" 2>/dev/null || break; sleep 0.1; done
fi
kill "$bochs_pid" 2>/dev/null || true
wait "$bochs_pid" 2>/dev/null || true
bochs_pid=

# The program's output: between the markers, without carriage returns and
# without kernel log lines ("[    1.234567] ...") that may interleave.
# The init prints "\n@@SR-EXIT", so a last line without newline stays intact;
# the empty line that this adds after a complete last line is dropped.
sed -e 's/\r$//' "$run/serial.out" | grep -av '^\[ *[0-9]*\.[0-9]*\] ' |
  awk '/@@SR-BEGIN@@/ {on=1; next}
       /@@SR-EXIT [0-9]*@@/ {if (held && prev != "") print prev; exit}
       on {if (held) print prev; prev=$0; held=1}' || true
if [ "$verbose" = 1 ]; then
  log "kernel log:"; sed -e 's/\r$//' "$run/serial.out" | awk '/@@SR-BEGIN@@/ {exit} 1' >&2
fi
fmt() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }
if [ -n "$t_begin" ]; then
  log "boot $(fmt "$t_boot" "$t_begin") s, program $(fmt "$t_begin" "$t_end") s, total $(fmt "$t0" "$t_end") s (wall)"
fi
case "$status" in
  [0-9]*) exit "$status" ;;
  timeout) log "timed out after $timeout_s s (SR_TIMEOUT)"; code=124 ;;
  panic) log "kernel panic"; code=125 ;;
  *) log "bochs exited before the program reported its status"; code=125 ;;
esac
tail -30 "$run/serial.out" | sed 's/\r$//' >&2
grep -a -E '^[0-9]+p\[' "$run/bochs.log" | tail -5 >&2 || true
tail -5 "$run/bochs.out" >&2
exit $code
}
main "$@"
