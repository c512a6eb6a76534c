"""Per-class outcome counts of the fuzz and fault-injection suites: cases tried, clear errors, silent
wrong answers, data lost (the last two must stay 0). Printed at the end of a module (``pytest -s``), and
appended as JSON lines to ``$LMPROBE_JAX_FAULT_REPORT`` when it is set."""

import json
import os
from collections import defaultdict

FIELDS = ("tried", "clear_errors", "silent_wrong", "data_lost")


class Counts:
    def __init__(self):
        self.classes: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))

    def add(self, name: str, *, clear: bool = False, silent_wrong: bool = False, data_lost: bool = False) -> None:
        row = self.classes[name]
        row["tried"] += 1
        row["clear_errors"] += bool(clear)
        row["silent_wrong"] += bool(silent_wrong)
        row["data_lost"] += bool(data_lost)

    def report(self) -> None:
        path = os.environ.get("LMPROBE_JAX_FAULT_REPORT")
        for name, row in sorted(self.classes.items()):
            print(f"OUTCOMES {name}: " + ", ".join(f"{key} {row[key]}" for key in FIELDS))
            if path:
                with open(path, "a") as handle:
                    handle.write(json.dumps({"class": name, **row}) + "\n")
