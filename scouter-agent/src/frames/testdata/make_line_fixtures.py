"""Generate line-table fixtures for scouter-agent/src/frames/lines.rs.

Run it with each CPython interpreter to test (3.8 to 3.13); it writes lines_3XX.json next to itself:

    for v in 3.8.18 3.9.18 3.10.13 3.11.7 3.12.1 3.13.0; do
        "$(pyenv root)/versions/$v/bin/python3" make_line_fixtures.py
    done

Each fixture lists code objects (sample functions compiled here, their nested code objects, and the code of
one stdlib module) with co_firstlineno, the raw line table (co_lnotab up to 3.9, co_linetable from 3.10) and the
line the interpreter itself reports for every 2-byte code unit. Expected lines come from the `dis`/code APIs
(dis.findlinestarts on 3.8/3.9, co_lines() on 3.10, co_positions() on 3.11+) and are cross-checked against the
interpreter's own C decoder, PyCode_Addr2Line, so the fixtures cannot drift from what CPython does.
"""

import ctypes
import dis
import json
import os
import sys
import textwrap
import types

MINOR = sys.version_info[1]

# The samples start far down the "file" so that co_firstlineno is large, as in real modules.
LEADING_BLANK_LINES = 1200

SAMPLES = '''
import functools


def multi_line_call(a, b):
    total = max(
        a,
        b,
        a + b,
    )
    return (total
            * 2
            - a)


def loops(items):
    acc = 0
    for item in items:
        if item % 2:
            continue
        acc += item
    i = 0
    while i < 10:
        i += 1
        if i == 7:
            break
    else:
        acc = -1
    return acc


def exceptions(path):
    try:
        handle = open(path)
    except FileNotFoundError as error:
        print("missing", error)
        return None
    except (OSError, ValueError):
        raise
    else:
        handle.close()
    finally:
        print("done")
    with open(path) as first, open(path) as second:
        return first.read() + second.read()


def comprehensions(rows):
    squares = [x * x for x in rows if x]
    pairs = {
        k: v
        for k, v in zip(rows, rows[1:])
    }
    total = sum(x for x in rows)
    nested = [[y for y in range(x)] for x in rows]
    return squares, pairs, total, nested, (lambda z: z + 1)(total)


def decorator(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper


@decorator
@functools.lru_cache(maxsize=None)


def decorated(n):



    return n + 1


def far_apart(flag):
    x = 1
''' + '\n' * 300 + '''
    y = x + 1
    while flag:
        flag = flag - 1
''' + '\n' * 300 + '''
        y += flag
    return g(
''' + '\n' * 300 + '''
        x,
        y)


def call_with_late_args(fn):
    return fn(
''' + '\n' * 300 + '''
        1,
    ).attribute


def long_line(a):
    b = ''' + ' + '.join('a * %d' % i for i in range(200)) + '''
    return b


async def coroutine(session):
    async with session:
        async for item in session:
            await item
    return [await x async for x in session]


def generator(n):
    for i in range(n):
        received = yield i
        if received:
            yield from range(received)


class Klass:
    attribute = 1

    def method(self):
        return self.attribute

    @property
    def prop(self):
        return [
            self.attribute,
            self.method(),
        ]


def f_strings(name, width):
    return f"{name!r:>{width}} and {name.upper()}" \\
        f"{width + 1}"
'''

MATCH_SAMPLE = '''

def matching(command):
    match command.split():
        case [action]:
            return action
        case [action, obj] if obj:
            return action, obj
        case {"key": value, **rest}:
            return value
        case _:
            return None
'''

# A real module adds volume and shapes we did not think of.
STDLIB_MODULE = textwrap


def source_of_samples():
    source = '\n' * LEADING_BLANK_LINES + SAMPLES
    if MINOR >= 10:
        source += MATCH_SAMPLE
    return source


def walk_code(code, prefix=''):
    """The code object and all code objects nested in its constants, depth first, in a stable order."""
    name = prefix + code.co_name
    yield name, code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from walk_code(const, name + '.')


def line_table(code):
    return code.co_lnotab if MINOR <= 9 else code.co_linetable


def expected_lines_lnotab(code):
    """3.8/3.9: the line of an instruction is that of the last line start at or before it."""
    starts = dict(dis.findlinestarts(code))
    lines = []
    current = code.co_firstlineno
    for offset in range(0, len(code.co_code), 2):
        current = starts.get(offset, current)
        lines.append(current)
    return lines


def expected_lines_310(code):
    lines = [None] * (len(code.co_code) // 2)
    for start, end, line in code.co_lines():
        for offset in range(start, end, 2):
            lines[offset // 2] = line
    return lines


def expected_lines_positions(code):
    """3.11+: co_positions() yields one location per code unit (caches included)."""
    return [position[0] for position in code.co_positions()]


def expected_lines(code):
    if MINOR <= 9:
        return expected_lines_lnotab(code)
    if MINOR == 10:
        return expected_lines_310(code)
    return expected_lines_positions(code)


def addr2line():
    function = ctypes.pythonapi.PyCode_Addr2Line
    function.argtypes = [ctypes.py_object, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def check_against_interpreter(name, code, lines):
    decode = addr2line()
    for index, line in enumerate(lines):
        by_c = decode(code, 2 * index)
        by_c = None if by_c < 0 else by_c
        if by_c != line:
            raise SystemExit('%s: offset %d: dis says %r, PyCode_Addr2Line says %r' % (name, 2 * index, line, by_c))


def fixture_entries(module_name, module_code):
    entries = []
    for name, code in walk_code(module_code, module_name + ':'):
        lines = expected_lines(code)
        assert len(lines) == len(code.co_code) // 2, name
        check_against_interpreter(name, code, lines)
        entries.append({
            'name': name,
            'first_line': code.co_firstlineno,
            'table': line_table(code).hex(),
            'code_bytes': len(code.co_code),
            'lines': lines,
        })
    return entries


def line_deltas(entries):
    deltas = []
    for entry in entries:
        known = [line for line in entry['lines'] if line is not None]
        deltas.extend(b - a for a, b in zip(known, known[1:]))
    return deltas


def main():
    samples = compile(source_of_samples(), 'samples.py', 'exec')
    with open(STDLIB_MODULE.__file__, encoding='utf-8') as handle:
        stdlib = compile(handle.read(), STDLIB_MODULE.__file__, 'exec')

    entries = fixture_entries('samples', samples) + fixture_entries(STDLIB_MODULE.__name__, stdlib)

    # The fixtures are only worth something if they hit the encodings' corner cases.
    deltas = line_deltas(entries)
    assert max(deltas) > 127 and min(deltas) < -128, (max(deltas), min(deltas))
    assert max(entry['code_bytes'] for entry in entries) > 2 * 254
    assert any(entry['first_line'] > LEADING_BLANK_LINES for entry in entries)
    if MINOR >= 10:
        assert any(line is None for entry in entries for line in entry['lines'])

    fixture = {
        'python': '%d.%d.%d' % sys.version_info[:3],
        'minor': MINOR,
        'codes': entries,
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'lines_3%d.json' % MINOR)
    with open(path, 'w', encoding='utf-8') as handle:
        json.dump(fixture, handle, separators=(',', ':'))
        handle.write('\n')
    print('%s: %d code objects, line deltas %d..%d' % (path, len(entries), min(deltas), max(deltas)))


if __name__ == '__main__':
    main()
