"""Small hostile or damaged files the tests build (issue 24)."""

import struct
import zlib


def png_claiming(width, height):
    """A valid PNG header that claims width x height RGB pixels, with one
    empty data chunk: a few dozen bytes a careless reader would decode into
    width * height * 3 bytes (a decompression bomb)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def truncated(data, keep=0.5):
    return data[:int(len(data) * keep)]


def bit_flipped(data, at=0.5):
    i = int(len(data) * at)
    return data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:]
