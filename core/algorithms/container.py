"""keyrotor's own versioned container for key material that has no standard encoding.

Used where PKCS#8 does not apply: keys from PQClean (Falcon, ML-KEM-512) and the two-part keys
of the hybrid algorithms. Layout (all lengths big-endian):

    magic      4 bytes   b"KRKM" (private material) or b"KRPK" (public key)
    version    1 byte    0x01
    name_len   1 byte    length of the canonical algorithm name
    name       name_len  the canonical algorithm name, ASCII (e.g. b"Falcon-512")
    then, for each part, in an order fixed by the algorithm:
    part_len   4 bytes
    part       part_len

The algorithm defines how many parts there are and what each is; nothing may follow the last
part. The name is inside so that material of one algorithm is never read as another's.
"""

from __future__ import annotations

import struct

from core.algorithms.base import AlgorithmError

PRIVATE_MAGIC = b"KRKM"
PUBLIC_MAGIC = b"KRPK"
VERSION = 1

_PART_LENGTH = struct.Struct(">I")


def pack(magic: bytes, name: str, parts: list[bytes]) -> bytes:
    """Return the container holding `parts` for algorithm `name`."""
    encoded_name = name.encode("ascii")
    out = [magic, bytes([VERSION, len(encoded_name)]), encoded_name]
    for part in parts:
        out.append(_PART_LENGTH.pack(len(part)))
        out.append(part)
    return b"".join(out)


def unpack(magic: bytes, name: str, data: bytes, count: int, what: str) -> list[bytes]:
    """Return the `count` parts of a container for `name`, or raise AlgorithmError.

    `what` names the expected content in the error (never the data: it may be a private key).
    """
    error = AlgorithmError(f"material is not a {name} {what} (keyrotor container v{VERSION})")
    encoded_name = name.encode("ascii")
    header = magic + bytes([VERSION, len(encoded_name)]) + encoded_name
    if not data.startswith(header):
        raise error
    parts: list[bytes] = []
    offset = len(header)
    for _ in range(count):
        if len(data) < offset + _PART_LENGTH.size:
            raise error
        (length,) = _PART_LENGTH.unpack_from(data, offset)
        offset += _PART_LENGTH.size
        if len(data) < offset + length:
            raise error
        parts.append(data[offset : offset + length])
        offset += length
    if offset != len(data):
        raise error
    return parts
