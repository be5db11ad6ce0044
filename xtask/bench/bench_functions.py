"""Bench program of the function part of `cargo xtask bench`: what one call costs, for a function
the agent selects (`--function bench_functions:selected`) and for one it does not.

`selected` and `unrelated` have the same body, so any difference between them is the agent's.
Run it imported, so the module the agent sees is `bench_functions` (under `-m` it would be
`__main__`):

    PYTHONPATH=xtask/bench python3 -B -c 'import bench_functions; bench_functions.main()'

It warms both functions up, prints `ready VERSION`, then answers one line per request on stdin:

    FUNCTION CALLS REPEATS   ->   the best ns per call of REPEATS runs of CALLS calls
    quit (or end of input)   ->   exits

Each run calls the function CALLS times in a tight `for` loop timed with perf_counter_ns, so
the figure includes the loop's own cost (the same for both functions). Errors are answered
with a line starting `error:`, so the bench never waits on a request it got wrong.
"""

import platform
import sys
import time

WARMUP_CALLS = 200_000


def selected(x):
    return x + 1


def unrelated(x):
    return x + 1


FUNCTIONS = {"selected": selected, "unrelated": unrelated}


def run_calls(function, calls):
    """Nanoseconds taken by `calls` calls of `function`."""
    start = time.perf_counter_ns()
    for i in range(calls):
        function(i)
    return time.perf_counter_ns() - start


def per_call_ns(function, calls, repeats):
    """The best (least disturbed) of `repeats` runs, per call."""
    return min(run_calls(function, calls) for _ in range(repeats)) / calls


def answer(request):
    words = request.split()
    if len(words) != 3 or words[0] not in FUNCTIONS:
        return "error: expected `FUNCTION CALLS REPEATS` with FUNCTION one of %s, got %r" % (
            ", ".join(sorted(FUNCTIONS)),
            request,
        )
    try:
        calls, repeats = int(words[1]), int(words[2])
    except ValueError:
        return "error: CALLS and REPEATS must be integers, got %r" % request
    if calls < 1 or repeats < 1:
        return "error: CALLS and REPEATS must be at least 1, got %r" % request
    return "%.3f" % per_call_ns(FUNCTIONS[words[0]], calls, repeats)


def main():
    # Warm both up the same way: on 3.11+ the adaptive interpreter specializes their calls.
    for function in FUNCTIONS.values():
        run_calls(function, WARMUP_CALLS)
    print("ready %s" % platform.python_version(), flush=True)
    for line in sys.stdin:
        request = line.strip()
        if request == "quit":
            break
        if request:
            print(answer(request), flush=True)
