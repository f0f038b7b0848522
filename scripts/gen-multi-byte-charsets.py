#!/usr/bin/env python3
"""Generate connectors/mysql/src/charset/tables/<charset>.bin from a MariaDB server.

The byte -> Unicode mapping of every multi-byte legacy character set (big5,
cp932, eucjpms, euckr, gb2312, gbk, sjis, ujis), as the server itself
converts it (CONVERT(... USING utf8mb4)), so the binlog decoder agrees with
what a snapshot reads. (The WHATWG tables of browsers differ from the
server's in hundreds of places: big5, sjis, gb2312, ujis, eucjpms.)

File format: little-endian u16 code points, 0xFFFF where the server cannot
convert the sequence (or it is not a character of that length):
  256 entries           single bytes 0x00..=0xFF
  126 * 191 entries     two bytes: lead 0x81..=0xFE, trail 0x40..=0xFE
  94 * 94 entries       three bytes 0x8F, 0xA1..=0xFE, 0xA1..=0xFE (eucjpms, ujis only)

Usage: scripts/gen-multi-byte-charsets.py [mysql client args...]
(default: -h127.0.0.1 -uroot)
"""
import os, struct, subprocess, sys

args = sys.argv[1:] or ["-h127.0.0.1", "-uroot"]
UNMAPPED = 0xFFFF
OUT = os.path.join(os.path.dirname(__file__), "..", "connectors", "mysql", "src", "charset", "tables")
THREE = {"eucjpms", "ujis"}


def q(sql):
    out = subprocess.run(["mysql", *args, "-N", "-B", "--default-character-set=utf8mb4",
                          "-e", "SET SESSION sql_mode = ''; " + sql],
                         check=True, capture_output=True, text=True).stdout
    return [l.split("\t") for l in out.splitlines() if l]


def one_char(hexed, qmark_ok=False):
    s = bytes.fromhex(hexed).decode("utf-8")
    if len(s) != 1 or (s == "?" and not qmark_ok):
        return UNMAPPED
    assert ord(s) < UNMAPPED, s
    return ord(s)


def conv(cs, expr, *ranges):
    tables = ", ".join(f"mysql.seq_{lo}_to_{hi} s{i}" for i, (lo, hi) in enumerate(ranges))
    order = ", ".join(f"s{i}.seq" for i in range(len(ranges)))
    return [one_char(r[0]) for r in
            q(f"SELECT HEX(CONVERT(CONVERT({expr} USING {cs}) USING utf8mb4)) FROM {tables} ORDER BY {order}")]


def byte(i):
    return f"UNHEX(LPAD(HEX(s{i}.seq), 2, '0'))"


names = [r[0] for r in q("SELECT CHARACTER_SET_NAME FROM information_schema.CHARACTER_SETS WHERE MAXLEN > 1 "
                          "AND CHARACTER_SET_NAME NOT LIKE 'utf%' AND CHARACTER_SET_NAME NOT IN ('ucs2') ORDER BY 1")]
for cs in names:
    single = [one_char(r[0], qmark_ok=(i == 0x3F)) for i, r in enumerate(
        q(f"SELECT HEX(CONVERT(CONVERT({byte(0)} USING {cs}) USING utf8mb4)) FROM mysql.seq_0_to_255 s0 ORDER BY s0.seq"))]
    assert len(single) == 256
    double = conv(cs, f"CONCAT({byte(0)}, {byte(1)})", (129, 254), (64, 254))
    assert len(double) == 126 * 191
    # A lead byte that is a character by itself does not start a two-byte one.
    for lead in range(0x81, 0xFF):
        if single[lead] != UNMAPPED:
            for t in range(191):
                double[(lead - 0x81) * 191 + t] = UNMAPPED
    entries = single + double
    if cs in THREE:
        triple = conv(cs, f"CONCAT(0x8F, {byte(0)}, {byte(1)})", (161, 254), (161, 254))
        assert len(triple) == 94 * 94
        entries += triple
    with open(os.path.join(OUT, f"{cs}.bin"), "wb") as f:
        f.write(struct.pack(f"<{len(entries)}H", *entries))
    mapped = sum(1 for e in entries if e != UNMAPPED)
    print(f"{cs}: {mapped} sequences", file=sys.stderr)
