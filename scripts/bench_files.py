"""The results files of `scratchnet bench --json` and of the baselines that time the same
problems (torch_baseline.py on a GPU, cpu_baseline.py on the CPU): JSON lines, a header line
(the tool, the device) then one line per problem, each written and flushed as soon as it is
measured, so that a run stopped by a deadline keeps the rows it measured.
"""

import json


def read_bench(path):
    """The header and rows of a bench file: JSON lines (header, then rows; a last line cut off
    by a stopped run is skipped) or the older single document with a "rows" list. The header
    is None when the first line is not one (it names no "tool")."""
    with open(path) as f:
        text = f.read()
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and isinstance(doc.get("rows"), list):
            return doc, doc["rows"]
    except ValueError:
        pass
    lines = [line for line in text.splitlines() if line.strip()]
    header, rows = None, []
    for i, line in enumerate(lines):
        try:
            value = json.loads(line)
        except ValueError:
            if i + 1 == len(lines) and i > 0:
                break
            raise ValueError(f"line {i + 1} is not JSON")
        if not isinstance(value, dict):
            raise ValueError(f"line {i + 1} is not a JSON object")
        if i == 0 and isinstance(value.get("tool"), str):
            header = value
            continue
        rows.append(value)
    return header, rows


class JsonLines:
    """A results file written a line at a time, each line flushed as soon as it is written."""

    def __init__(self, path):
        self.f = open(path, "w")

    def write(self, value):
        self.f.write(json.dumps(value) + "\n")
        self.f.flush()

    def close(self):
        self.f.close()
