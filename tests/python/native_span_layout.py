"""Measures where the installed scouter-ml build keeps its current span's ids, and prints the
entry the agent's table of known builds needs (scouter-agent/src/discovery/native_sdk.rs).

Run with an interpreter that has scouter-ml installed: python native_span_layout.py

The current span is a pyo3 object (`ActiveSpan`): after the object header, a pointer to shared
state, which holds the OpenTelemetry Rust SDK's span as a trait object (data pointer, vtable
pointer); the span holds its trace id (u128) and span id (u64) as little-endian integers. This
script finds those offsets by looking for the ids the SDK reports in the memory of live spans,
checks that every span it makes (nested, decorated, on another thread, in a coroutine) agrees,
and prints the vtable's address relative to where the extension was loaded.
"""

import asyncio
import os
import platform
import threading

from scouter.mock import MockConfig
from scouter.tracing import get_current_active_span, get_tracer, init_tracer

WORD = 8
# How far into each object the ids and pointers are looked for.
SPAN_BYTES = 256
STATE_BYTES = 128


MEMORY = os.open("/proc/self/mem", os.O_RDONLY)


# Above this no user-space address lies (x86-64, 47-bit): a word beyond it is not a pointer.
USER_SPACE_END = 1 << 47


def read(address, size):
    """`size` bytes at `address`, or None where memory is not mapped (ctypes would crash) or
    the word is not a user-space address."""
    if not 0 < address < USER_SPACE_END:
        return None
    try:
        data = os.pread(MEMORY, size, address)
    except OSError:
        return None
    return data if len(data) == size else None


def read_word(address):
    data = read(address, WORD)
    return None if data is None else int.from_bytes(data, "little")


def extension_mapping():
    """(path, start address) of the scouter extension mapped from its first byte."""
    for line in open("/proc/self/maps"):
        fields = line.split()
        if len(fields) > 5 and fields[5].endswith("/_scouter.abi3.so") and int(fields[2], 16) == 0:
            return fields[5], int(fields[0].split("-")[0], 16)
    raise SystemExit("scouter's extension is not mapped")


def build_id(path):
    """The GNU build id note of an ELF, in hex (reads the section headers)."""
    import struct

    with open(path, "rb") as elf:
        data = elf.read()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    for index in range(shnum):
        header = shoff + index * shentsize
        kind, = struct.unpack_from("<I", data, header + 4)
        offset, size = struct.unpack_from("<QQ", data, header + 0x18)
        if kind != 7:  # SHT_NOTE
            continue
        at = offset
        while at < offset + size:
            namesz, descsz, note_type = struct.unpack_from("<III", data, at)
            name_at = at + 12
            desc_at = name_at + ((namesz + 3) & ~3)
            if note_type == 3 and data[name_at:name_at + namesz] == b"GNU\0":  # NT_GNU_BUILD_ID
                return data[desc_at:desc_at + descsz].hex()
            at = desc_at + ((descsz + 3) & ~3)
    raise SystemExit("%s has no GNU build id" % path)


def candidates(span):
    """Every (state, span pointer, vtable pointer, trace id, span id) offset set under which
    `span`'s memory holds its reported ids."""
    trace = bytes.fromhex(span.trace_id)[::-1]
    ident = bytes.fromhex(span.span_id)[::-1]
    found = set()
    head = read(id(span), SPAN_BYTES)
    for state_at in range(2 * WORD, SPAN_BYTES, WORD):
        state = int.from_bytes(head[state_at:state_at + WORD], "little")
        state_bytes = read(state, STATE_BYTES) if state % WORD == 0 else None
        if state_bytes is None:
            continue
        for span_at in range(0, STATE_BYTES - WORD, WORD):
            target = int.from_bytes(state_bytes[span_at:span_at + WORD], "little")
            body = read(target, SPAN_BYTES) if target % WORD == 0 else None
            if body is None:
                continue
            trace_at, id_at = body.find(trace), body.find(ident)
            if trace_at >= 0 and id_at >= 0:
                found.add((state_at, span_at, span_at + WORD, trace_at, id_at))
    return found


def vtable(span, layout):
    state_at, _, vtable_at, _, _ = layout
    return read_word(read_word(id(span) + state_at) + vtable_at)


def main():
    init_tracer(service_name="layout", transport_config=MockConfig())
    tracer = get_tracer("layout")
    seen = []

    def record():
        span = get_current_active_span()
        seen.append((candidates(span), span))

    with tracer.start_as_current_span("outer"):
        record()
        with tracer.start_as_current_span("inner"):
            record()

    @tracer.span("decorated")
    def decorated():
        record()

    decorated()
    worker = threading.Thread(target=decorated)
    worker.start()
    worker.join()

    @tracer.span("coroutine")
    async def coroutine():
        record()

    asyncio.run(coroutine())

    common = set.intersection(*(found for found, _ in seen))
    vtables = {layout: {vtable(span, layout) for _, span in seen} for layout in common}
    agreed = [layout for layout, tables in vtables.items() if len(tables) == 1]
    if len(agreed) != 1:
        raise SystemExit("no single layout holds for every span: %s" % sorted(vtables.items()))
    layout = agreed[0]
    path, start = extension_mapping()
    state_at, span_at, vtable_at, trace_at, id_at = layout
    relative = vtable(seen[0][1], layout) - start
    from importlib.metadata import version

    print("KnownBuild {")
    print('    package: "scouter-ml %s (%s)",' % (version("scouter-ml"), platform.machine()))
    print('    extension: "_scouter.abi3.so",')
    print('    build_id: "%s",' % build_id(path))
    print("    layout: NativeSpanLayout {")
    print("        span_vtable: 0x%x," % relative)
    print("        state: %d," % state_at)
    print("        span: %d," % span_at)
    print("        span_vtable_at: %d," % vtable_at)
    print("        trace_id: %d," % trace_at)
    print("        span_id: %d," % id_at)
    print("        _pad: [0; 3],")
    print("    },")
    print("}")

if __name__ == "__main__":
    main()
