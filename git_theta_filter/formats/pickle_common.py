"""The opcodes torch.save writes, read in one loop: the scanner's fast path.

``pickle._Unpickler`` (the scanner's reader, see ``pickle_scan.py``) reads
each opcode and each argument through two Python calls, its unframer's and
then ``BytesIO``'s: a data.pkl of 6,000 tensors is 300,000 such reads, a
fifth of the time to clean the checkpoint. This loop indexes the bytes
instead and handles the protocol-2 opcodes that ``torch.save`` writes for
tensors, containers, strings and numbers, each with ``pickle._Unpickler``'s
semantics. Globals and persistent ids go to the same hooks (``find_class``,
``persistent_load``), so the allowlist is unchanged, and the memo is a dict
(no array sized by a PUT's index).

Any other opcode, and any error, gives :data:`UNREAD`: the scanner then reads
the pickle with ``pickle._Unpickler``, whose result or error is the one that
counts. So this loop has to agree with it only where it succeeds, which
tests/unit/test_pickle_common.py checks on real and damaged pickles.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from typing import Any

__all__ = ["UNREAD", "load_common"]

# What load_common returns for a pickle it leaves to pickle._Unpickler.
UNREAD: Any = object()

_UINT32 = struct.Struct("<I").unpack_from
_INT32 = struct.Struct("<i").unpack_from
_UINT16 = struct.Struct("<H").unpack_from
_DOUBLE = struct.Struct(">d").unpack_from


def load_common(
    data: bytes,
    find_class: Callable[[str, str], Any],
    persistent_load: Callable[[Any], Any],
) -> Any:
    """The object ``data`` pickles, or :data:`UNREAD` if it is not made of the common
    opcodes only, or is not a valid pickle."""
    try:
        return _load(data, find_class, persistent_load)
    except Exception:  # any error: pickle._Unpickler reads it again and names it
        return UNREAD


def _load(
    data: bytes,
    find_class: Callable[[str, str], Any],
    persistent_load: Callable[[Any], Any],
) -> Any:
    stack: list[Any] = []
    metastack: list[list[Any]] = []  # the stacks under each MARK
    memo: dict[int, Any] = {}
    pos = 0
    # One branch per opcode, in one loop (a call per opcode is what made pickle._Unpickler
    # slow), in the order of how often torch writes them.
    while True:
        op = data[pos]
        pos += 1
        if op == 0x71:  # BINPUT
            memo[data[pos]] = stack[-1]
            pos += 1
        elif op == 0x72:  # LONG_BINPUT
            memo[_UINT32(data, pos)[0]] = stack[-1]
            pos += 4
        elif op == 0x68:  # BINGET
            stack.append(memo[data[pos]])
            pos += 1
        elif op == 0x28:  # MARK
            metastack.append(stack)
            stack = []
        elif op == 0x58:  # BINUNICODE
            size = _UINT32(data, pos)[0]
            pos += 4
            # A size past the end takes what is left; reading the next opcode then fails.
            stack.append(str(data[pos : pos + size], "utf-8", "surrogatepass"))
            pos += size
        elif op == 0x4D:  # BININT2
            stack.append(_UINT16(data, pos)[0])
            pos += 2
        elif op == 0x4B:  # BININT1
            stack.append(data[pos])
            pos += 1
        elif op == 0x74:  # TUPLE
            items = stack
            stack = metastack.pop()
            stack.append(tuple(items))
        elif op == 0x85:  # TUPLE1
            stack[-1] = (stack[-1],)
        elif op == 0x52:  # REDUCE
            args = stack.pop()
            stack[-1] = stack[-1](*args)
        elif op == 0x51:  # BINPERSID
            stack[-1] = persistent_load(stack[-1])
        elif op == 0x89:  # NEWFALSE
            stack.append(False)
        elif op == 0x88:  # NEWTRUE
            stack.append(True)
        elif op == 0x29:  # EMPTY_TUPLE
            stack.append(())
        elif op == 0x6A:  # LONG_BINGET
            stack.append(memo[_UINT32(data, pos)[0]])
            pos += 4
        elif op == 0x4A:  # BININT
            stack.append(_INT32(data, pos)[0])
            pos += 4
        elif op == 0x47:  # BINFLOAT
            stack.append(_DOUBLE(data, pos)[0])
            pos += 8
        elif op == 0x8A:  # LONG1
            size = data[pos]
            pos += 1
            stack.append(int.from_bytes(data[pos : pos + size], "little", signed=True))
            pos += size
        elif op == 0x86:  # TUPLE2
            second = stack.pop()
            stack[-1] = (stack[-1], second)
        elif op == 0x87:  # TUPLE3
            third = stack.pop()
            second = stack.pop()
            stack[-1] = (stack[-1], second, third)
        elif op == 0x4E:  # NONE
            stack.append(None)
        elif op == 0x7D:  # EMPTY_DICT
            stack.append({})
        elif op == 0x5D:  # EMPTY_LIST
            stack.append([])
        elif op == 0x75:  # SETITEMS
            items = stack
            stack = metastack.pop()
            target = stack[-1]
            for index in range(0, len(items), 2):
                target[items[index]] = items[index + 1]
        elif op == 0x73:  # SETITEM
            value = stack.pop()
            key = stack.pop()
            stack[-1][key] = value
        elif op == 0x65:  # APPENDS (pickle calls append() where there is no extend(),
            # which none of the scanner's containers lacks)
            items = stack
            stack = metastack.pop()
            stack[-1].extend(items)
        elif op == 0x61:  # APPEND
            value = stack.pop()
            stack[-1].append(value)
        elif op == 0x63:  # GLOBAL: "module\nname\n"
            module_end = data.index(b"\n", pos)
            name_end = data.index(b"\n", module_end + 1)
            module = data[pos:module_end].decode("utf-8")
            name = data[module_end + 1 : name_end].decode("utf-8")
            pos = name_end + 1
            stack.append(find_class(module, name))
        elif op == 0x80:  # PROTO
            if not 0 <= data[pos] <= pickle.HIGHEST_PROTOCOL:
                return UNREAD
            pos += 1
        elif op == 0x2E:  # STOP
            return stack.pop()
        else:
            return UNREAD
