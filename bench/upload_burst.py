#!/usr/bin/env python3
"""Peak resident memory of `medret serve` under a burst of worst-case uploads.

Sends N concurrent searches, each an RLE Lossless DICOM (a few MB) whose header claims
ROWS x COLS 8-bit pixels (or with --png an RGB PNG of that size, a few hundred KB), and
reads the server's peak RSS (VmHWM) before and after.
Usage: upload_burst.py URL PID MODEL [--rows 16000 --cols 16000 --n 16 --png]
Standard library only; prints one JSON line.
"""
import argparse
import json
import struct
import threading
import time
import urllib.request


def element(group, elem, vr, value):
    if len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB") else b" "
    head = struct.pack("<HH", group, elem) + vr
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def rle_dicom(rows, cols):
    """An RLE Lossless DICOM of rows x cols 8-bit zeros: runs of 128, 2 bytes each."""
    segment = b"\x81\x00" * (rows * cols // 128)
    fragment = struct.pack("<16I", 1, 64, *([0] * 14)) + segment
    if len(fragment) % 2:
        fragment += b"\0"
    sop = b"1.2.840.10008.5.1.4.1.1.1.1"
    ts = b"1.2.840.10008.1.2.5"
    meta = (
        element(0x0002, 0x0001, b"OB", b"\0\1")
        + element(0x0002, 0x0002, b"UI", sop)
        + element(0x0002, 0x0003, b"UI", b"1.2.3.4.5")
        + element(0x0002, 0x0010, b"UI", ts)
    )
    meta = element(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta))) + meta
    us = lambda v: struct.pack("<H", v)
    data = (
        element(0x0008, 0x0016, b"UI", sop)
        + element(0x0008, 0x0018, b"UI", b"1.2.3.4.5")
        + element(0x0028, 0x0002, b"US", us(1))
        + element(0x0028, 0x0004, b"CS", b"MONOCHROME2")
        + element(0x0028, 0x0010, b"US", us(rows))
        + element(0x0028, 0x0011, b"US", us(cols))
        + element(0x0028, 0x0100, b"US", us(8))
        + element(0x0028, 0x0101, b"US", us(8))
        + element(0x0028, 0x0102, b"US", us(7))
        + element(0x0028, 0x0103, b"US", us(0))
    )
    item = lambda body: struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body
    pixels = (
        struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0" + struct.pack("<I", 0xFFFFFFFF)
        + item(b"") + item(fragment) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )
    return b"\0" * 128 + b"DICM" + meta + data + pixels


def png_bomb(rows, cols):
    """An RGB PNG of rows x cols black pixels: a few hundred KB that decode to
    rows x cols x 3 bytes (and 4 times that as float32)."""
    import zlib
    row = b"\0" + b"\0" * (3 * cols)
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(rows)) + z.flush()
    chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body
                                + struct.pack(">I", zlib.crc32(kind + body)))
    ihdr = struct.pack(">IIBBBBB", cols, rows, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def post(url, model, body, out, i, name):
    b = "burstboundary"
    payload = (
        f"--{b}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n"
        f"--{b}\r\nContent-Disposition: form-data; name=\"explain\"\r\n\r\nfalse\r\n"
        f"--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n\r\n"
    ).encode() + body + f"\r\n--{b}--\r\n".encode()
    req = urllib.request.Request(
        url + "/api/v1/search", data=payload,
        headers={"Content-Type": f"multipart/form-data; boundary={b}"})
    t = time.time()
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            out[i] = (r.status, time.time() - t)
    except urllib.error.HTTPError as e:
        out[i] = (e.code, time.time() - t)
    except Exception as e:  # a dropped connection
        out[i] = (str(e), time.time() - t)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("pid", type=int)
    p.add_argument("model")
    p.add_argument("--rows", type=int, default=16000)
    p.add_argument("--cols", type=int, default=16000)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--png", action="store_true", help="an RGB PNG instead of an RLE DICOM")
    a = p.parse_args()
    body = png_bomb(a.rows, a.cols) if a.png else rle_dicom(a.rows, a.cols)
    name = "big.png" if a.png else "big.dcm"
    before = hwm(a.pid)
    out = [None] * a.n
    threads = [threading.Thread(target=post, args=(a.url, a.model, body, out, i, name)) for i in range(a.n)]
    t = time.time()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    statuses = {}
    for s, _ in out:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    print(json.dumps({
        "uploads": a.n, "kind": name, "upload_mb": round(len(body) / 2**20, 2),
        "claimed": f"{a.rows}x{a.cols}", "statuses": statuses,
        "seconds": round(time.time() - t, 2),
        "peak_rss_mb_before": round(before, 1), "peak_rss_mb_after": round(hwm(a.pid), 1),
    }))


if __name__ == "__main__":
    main()
