"""Finds the smoke test's span in the agent's store: a SERVER span whose url.path is PATH.

Usage: smoke_check.py AGENT STORE PATH. Reads the store through the agent's own viewer
(`traces list --json`, then `traces show --json` for each trace), prints the span it found
and exits 0, or says what it saw and exits 1. Part of the kernel matrix
(xtask/src/kernels/guest/matrix.sh); runs on the guest's Python.
"""

import json
import subprocess
import sys


def traces(agent, store, *args):
    command = [agent, "traces", *args, "--json", "--store-path", store]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"`{' '.join(command)}` failed ({result.returncode}): {result.stderr.strip()}")
    return json.loads(result.stdout)


def main():
    agent, store, path = sys.argv[1:4]
    summaries = traces(agent, store, "list", "--limit", "1000")
    seen = []
    for summary in summaries:
        for span in traces(agent, store, "show", summary["traceId"]):
            attributes = span.get("attributes", {})
            if span.get("kind") == "SERVER" and attributes.get("url.path") == path:
                print(f"found: {json.dumps(span, sort_keys=True)}")
                return 0
            seen.append(f"{span.get('kind')} {span.get('name')} {attributes.get('url.path')}")
    print(f"no SERVER span with url.path {path} in {len(summaries)} traces; spans seen: {seen or 'none'}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
