"""Object uids: one safe path component each, derived readably and stably from names.

A uid names an object's output folder (``<out>/<layout>/<uid>/``), its staging and scratch
folders (``<uid>.<32 hex>``, ``imesh-<uid>-<8 chars>``) and, for other methods' meshes, a
file ``<uid>.glb``; it also seeds the object's cameras. So it must be one path component on
every filesystem and object store we write to, and never change for the same name.

**Safe uid** (:func:`uid_problem` says why one is not):

- NFC-normalised (a name typed on Linux and the decomposed form macOS stores are one uid);
- characters: unicode letters and digits (``str.isalnum``), ``_``, ``-``, ``.``;
- starts with a letter or digit, contains no ``..``;
- at most :data:`MAX_UID_BYTES` (200) bytes in UTF-8: a path component holds 255 bytes, and
  the longest name built from a uid (``<uid>.<32 hex>`` while staging) takes 33 more.

**Derivation from a file or folder name** (:func:`uid_from_name`):

1. NFC-normalise the name (file names: the stem, without the extension);
2. replace every run of other characters (spaces, punctuation, control and format characters,
   undecodable bytes) by one ``_``, and every run of two or more dots by ``_``;
3. strip ``.``, ``_`` and ``-`` from both ends;
4. only when the result is empty or longer than 200 bytes: keep its first characters (at most
   191 bytes) and append ``-`` plus the first 8 hex digits of the SHA-256 of the NFC name
   (an empty result becomes ``object-<8 hex>``). The suffix keeps long names that share a
   prefix apart; it depends on the name only, so the uid is stable.

Examples: ``chair`` -> ``chair``, ``Coffee Mug`` -> ``Coffee_Mug``, ``Café_Cup`` ->
``Café_Cup``, ``椅子`` -> ``椅子``, ``a b`` -> ``a_b``, 244 x ``a`` -> 191 x ``a`` + ``-<hash>``.
ASCII names that gave a safe uid before keep it (the ASCII part of the rule is unchanged).

**Collisions**: different names can give the same uid (``a b`` and ``a_b``), and uids equal up
to case (``Chair`` / ``chair``) would share a folder on case-insensitive filesystems (macOS,
Windows). :func:`uid_collisions` groups them; callers turn each group into one failed row
naming every file, never silently attributing a uid (and its earlier outputs) to one of them.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

MAX_UID_BYTES = 200
SUFFIX_HEX = 8
_KEEP_PUNCT = "_-."


def _allowed(ch: str) -> bool:
    return ch.isalnum() or ch in _KEEP_PUNCT


def uid_problem(uid: object) -> str | None:
    """Why ``uid`` is not a safe uid (module docstring), or None when it is."""
    if not isinstance(uid, str) or not uid:
        return "empty or not a string"
    if not unicodedata.is_normalized("NFC", uid):
        return "not NFC-normalised"
    if len(uid.encode("utf-8", errors="surrogatepass")) > MAX_UID_BYTES:
        return f"longer than {MAX_UID_BYTES} bytes"
    if not uid[0].isalnum():
        return "does not start with a letter or digit"
    if ".." in uid:
        return "contains '..'"
    bad = sorted({ch for ch in uid if not _allowed(ch)})
    if bad:
        return f"contains {', '.join(repr(c) for c in bad[:5])}"
    return None


def is_safe_uid(uid: object) -> bool:
    return uid_problem(uid) is None


class UnsafeUidError(ValueError):
    """A uid that cannot be used as a path component inside an output root."""


def check_uid(uid: str, what: str = "uid") -> str:
    """Return ``uid`` unchanged if it is a safe uid (module docstring), else raise
    :class:`UnsafeUidError` saying why; ``what`` names it in the message (``"object id"``).

    The one uid check of the project: path separators, ``..`` and hidden names are refused so an
    item can never write outside its job's output root (``pipelines.storage``), and evaluation
    datasets and selection lists hold only usable ids (``evaluation.datasets``).
    """
    problem = uid_problem(uid)
    if problem is not None:
        raise UnsafeUidError(
            f"{what} {uid!r} is not a safe path component ({problem}; allowed: unicode letters, "
            f"digits, '_', '-', '.', starting with a letter or digit, no '..', at most "
            f"{MAX_UID_BYTES} bytes)"
        )
    return uid


def _name_hash(name: str) -> str:
    data = name.encode("utf-8", errors="surrogateescape")
    return hashlib.sha256(data).hexdigest()[:SUFFIX_HEX]


def _cut_bytes(text: str, limit: int) -> str:
    out, used = [], 0
    for ch in text:
        n = len(ch.encode("utf-8"))
        if used + n > limit:
            break
        out.append(ch)
        used += n
    return "".join(out)


def uid_from_name(name: str) -> str:
    """A safe, readable, stable uid for a file stem or folder name (module docstring)."""
    nfc = unicodedata.normalize("NFC", name)
    chars: list[str] = []
    for ch in nfc:
        ok = _allowed(ch) and not ("\ud800" <= ch <= "\udfff")  # undecodable bytes
        if ok:
            chars.append(ch)
        elif not chars or chars[-1] != "\0":
            chars.append("\0")  # a run of other characters -> one "_"
    text = re.sub(r"\.{2,}", "_", "".join(chars).replace("\0", "_")).strip("._-")
    if text and len(text.encode("utf-8")) <= MAX_UID_BYTES:
        return text
    head = _cut_bytes(text, MAX_UID_BYTES - SUFFIX_HEX - 1).rstrip("._-")
    uid = f"{head or 'object'}-{_name_hash(nfc)}"
    assert is_safe_uid(uid), uid
    return uid


def uid_collisions(uids: Iterable[str]) -> dict[str, list[int]]:
    """Indices of entries whose uids are equal up to case, by the first uid of each group of
    two or more (order kept)."""
    groups: dict[str, list[int]] = {}
    first: dict[str, str] = {}
    for i, uid in enumerate(uids):
        key = uid.casefold()
        first.setdefault(key, uid)
        groups.setdefault(key, []).append(i)
    return {first[k]: idx for k, idx in groups.items() if len(idx) > 1}


class UidCollision(ValueError):
    """Several files or folders would get the same uid (the message names all of them)."""
