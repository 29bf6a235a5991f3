"""Benchmark: what look-alike marks cost the Tk thread in a big room.

Run under a display (Xvfb works):

    xvfb-run -a python3 -m tests.bench.lookalike [--names 10000]

Measures, on the Tk thread of a real ``ChatView``: loading Unicode's data
(once per process, at the first list), the welcome's ``set_users`` of N
names (half ASCII, half mixed Latin and Cyrillic, a few look-alikes among
them) with and without the marks (``LookalikeIndex.reset`` alone), the same
list again (a /who reply or a reconnect: the keys are kept), and one join
and one leave in that room, each the median of 200. Exit status 1 if a
join or a leave takes more than ``LIMIT_MS``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

LIMIT_MS = 2.0  # a join or a leave, with its marks, in a room of 10,000


def names(count: int, rng: random.Random) -> list[str]:
    latin = "abcdefghijklmnopqrstuvwxyz"
    mixed = latin + "абвгдежзийклмнопрстуфхцчшщ"
    half = count // 2
    found = {f"user{n:05d}" for n in range(half)}
    while len(found) < count:
        found.add("".join(rng.choice(mixed) for _ in range(rng.randint(4, 12))))
    return sorted(found)


def timed(action: object) -> float:
    start = time.perf_counter()
    action()  # type: ignore[operator]
    return (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=10_000)
    args = parser.parse_args()
    import ttkbootstrap as ttk  # noqa: PLC0415 - after the arguments: --help needs no display

    from app import lookalike  # noqa: PLC0415
    from app.chat_view import ChatView  # noqa: PLC0415

    root = ttk.App(title="bench", theme="bootstrap-light")
    view = ChatView(root, on_send=lambda _text: True, font_size=11)
    view.pack()
    rng = random.Random(7)
    room = names(args.names, rng)
    load = timed(lookalike._prototypes) + timed(lambda: lookalike.scripts("\u0430"))
    fresh = lookalike.LookalikeIndex()
    index_only = timed(lambda: fresh.reset(room))
    first = timed(lambda: view.set_users(room))
    again = timed(lambda: view.set_users(room))
    joins, leaves = [], []
    for n in range(200):
        name = f"new\u0430{n}" if n % 2 else f"user{n:05d}x"
        joins.append(timed(lambda name=name: view.user_joined(name)))
        leaves.append(timed(lambda name=name: view.user_left(name)))
        root.update()
    join, leave = statistics.median(joins), statistics.median(leaves)
    print(f"names: {len(room):,}; marked: {sum(1 for n in room if view.lookalike(n)):,}")
    print(f"data loaded once: {load:.1f} ms")
    print(f"keys of the room alone (LookalikeIndex.reset): {index_only:.1f} ms")
    print(f"welcome set_users, with the marks: {first:.1f} ms; the same list again: {again:.1f} ms")
    print(
        f"one join: median {join:.3f} ms (max {max(joins):.3f}); one leave: median "
        f"{leave:.3f} ms (max {max(leaves):.3f})"
    )
    view.destroy()
    root.destroy()
    return 1 if max(join, leave) > LIMIT_MS else 0


if __name__ == "__main__":
    sys.exit(main())
