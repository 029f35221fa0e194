"""bench/memory.py's docs/memory.md: written again by `python -m bench.memory`, it keeps the memory test's section."""
from __future__ import annotations

from bench.memory import KEPT_SECTION, kept_section, markdown

RESULTS = {"idle_kib": 96 * 1024, "kinds": [{"kind": "k", "request": "r", "body_bytes": 2**20, "reserved_bytes": 2**24,
                                             "peak_kib": 200 * 1024, "after_kib": 100 * 1024,
                                             "runs": [{"status": 200, "seconds": 1.0}]}]}


def test_the_memory_test_section_is_kept_when_the_table_is_written_again() -> None:
    section = f"{KEPT_SECTION[0]}\n## Normal requests while the largest flow\np99 0.07 s\n{KEPT_SECTION[1]}\n"
    earlier = markdown(RESULTS) + "\n" + section
    again = markdown({**RESULTS, "idle_kib": 90 * 1024}, kept_section(earlier))
    assert again.endswith(section) and again.count(KEPT_SECTION[0]) == 1 and "**90 MiB**" in again
    assert kept_section(markdown(RESULTS)) == "" and markdown(RESULTS, "") == markdown(RESULTS)
