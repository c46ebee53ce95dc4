"""Damage real SQLCipher pages: find a table's pages by decrypting the b-tree (SQLCipher 4
defaults, raw key: AES-256-CBC with the key itself, 16-byte IV and 64-byte HMAC reserved at
the end of each 4 KiB page, the salt in place of page 1's first 16 bytes), then flip a byte."""

from __future__ import annotations

from pathlib import Path

import sqlcipher3
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from edge.vault import cipher

PAGE = 4096
RESERVE = 80


def decrypt_page(data: bytes, key: bytes, pgno: int) -> bytes:
    """The plaintext of page ``pgno`` (page 1's first 16 bytes are zeros)."""
    page = data[(pgno - 1) * PAGE: pgno * PAGE]
    start = 16 if pgno == 1 else 0
    iv = page[PAGE - RESERVE: PAGE - RESERVE + 16]
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return bytes(start) + dec.update(page[start: PAGE - RESERVE]) + dec.finalize()


def root_page(db: Path, key: bytes, table: str) -> int:
    conn = sqlcipher3.connect(str(db))
    try:
        cipher.apply_key(conn, key)
        row = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?",
                           (table,)).fetchone()
        return int(row[0])
    finally:
        conn.close()


def table_pages(db: Path, key: bytes, table: str) -> tuple[list[int], list[int]]:
    """(interior pages, leaf pages) of ``table``'s b-tree, leaves in key order."""
    data = db.read_bytes()
    interior: list[int] = []
    leaves: list[int] = []

    def walk(pgno: int) -> None:
        page = decrypt_page(data, key, pgno)
        h = 100 if pgno == 1 else 0
        kind = page[h]
        if kind == 0x0D:
            leaves.append(pgno)
            return
        assert kind == 0x05, f"page {pgno} is not a table b-tree page ({kind:#x})"
        interior.append(pgno)
        n = int.from_bytes(page[h + 3: h + 5], "big")
        ptrs = [int.from_bytes(page[h + 12 + 2 * i: h + 14 + 2 * i], "big") for i in range(n)]
        for p in ptrs:
            walk(int.from_bytes(page[p: p + 4], "big"))
        walk(int.from_bytes(page[h + 8: h + 12], "big"))

    walk(root_page(db, key, table))
    return interior, leaves


def flip(db: Path, pgno: int, offset: int = 1000) -> None:
    """Flip one bit of page ``pgno`` (in place)."""
    with db.open("r+b") as f:
        f.seek((pgno - 1) * PAGE + offset)
        b = f.read(1)
        f.seek((pgno - 1) * PAGE + offset)
        f.write(bytes([b[0] ^ 0x01]))
