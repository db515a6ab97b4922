"""Boot image for tools/run-sapphire-rapids.sh.

usage: sapphire_rapids_image.py OUT.iso VMLINUZ ISOLINUX_BIN LDLINUX_C32 INIT PROG \
           CMDLINE [NAME=VALUE...] -- [ARGS...]

Writes an initramfs (cpio newc, gzip) holding /init (INIT), /prog (PROG),
/env (the NAME=VALUE words) and /args (ARGS), both NUL-separated, and
/dev/console, and an El Torito ISO (ISOLINUX,
no emulation, boot info table) that boots VMLINUZ with it and CMDLINE.
The ISO is made with pycdlib (pure Python, from PyPI, on PYTHONPATH).
"""

import gzip
import io
import sys

import pycdlib


def cpio_newc(entries):
    """entries: (name, mode, data, rdevmajor, rdevminor) in order."""
    out = io.BytesIO()
    ino = 1
    for name, mode, data, rmaj, rmin in entries + [("TRAILER!!!", 0, b"", 0, 0)]:
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join("%08X" % v for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rmaj, rmin, len(nb), 0))
        out.write(hdr.encode() + nb)
        out.write(b"\0" * (-(110 + len(nb)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
        ino += 1
    return out.getvalue()


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def nul_separated(words):
    return b"".join(w.encode() + b"\0" for w in words)


def main():
    out, vmlinuz, isolinux, ldlinux, init, prog, cmdline, *rest = sys.argv[1:]
    sep = rest.index("--")
    env, args = rest[:sep], rest[sep + 1 :]
    initrd = gzip.compress(
        cpio_newc(
            [
                ("dev", 0o040755, b"", 0, 0),
                ("dev/console", 0o020600, b"", 5, 1),
                ("init", 0o100755, read_bytes(init), 0, 0),
                ("prog", 0o100755, read_bytes(prog), 0, 0),
                ("env", 0o100644, nul_separated(env), 0, 0),
                ("args", 0o100644, nul_separated(args), 0, 0),
            ]
        ),
        compresslevel=1,
    )
    cfg = (
        "DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n"
        "  KERNEL /VMLINUZ\n  INITRD /INITRD.GZ\n  APPEND %s\n" % cmdline
    ).encode()
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3)
    for name, data in (
        ("/ISOLINUX.BIN;1", read_bytes(isolinux)),
        ("/LDLINUX.C32;1", read_bytes(ldlinux)),
        ("/ISOLINUX.CFG;1", cfg),
        ("/VMLINUZ;1", read_bytes(vmlinuz)),
        ("/INITRD.GZ;1", initrd),
    ):
        iso.add_fp(io.BytesIO(data), len(data), name)
    iso.add_eltorito("/ISOLINUX.BIN;1", bootcatfile="/BOOT.CAT;1", boot_load_size=4, boot_info_table=True)
    iso.write(out)
    iso.close()


if __name__ == "__main__":
    main()
