"""A graded arithmetic ladder for CPU-sized runs, deterministic from a seed.

Level 1: one operation on two numbers. Level 2: two-step word problems. Level 3: three-step word
problems. Every sample has a worked solution (one line per step). Each question belongs to one split
by a hash of its text (`base.generated_split`: a tenth test, a tenth validation, the rest train), the
same for every config, level, seed and size, and each split's stream is drawn from the generator
keeping only its own questions: no train question of any config is a test question of any config.

Configs: "1", "2", "3", "1-2", "2-3", "1-3" (default). Options: seed (0), test_size (300),
validation_size (500), train_size (10000).
"""

from __future__ import annotations

import random
from typing import Callable

from mathrl.tasks.base import Sample, Task, generate_split, register

NAMES = ["Ava", "Ben", "Carla", "Dev", "Emma", "Farid", "Gina", "Hugo", "Iris", "Jon", "Kemi", "Liam", "Mia", "Noah"]
ITEMS = ["apples", "stickers", "marbles", "books", "cookies", "pencils", "stamps", "shells", "cards", "beads"]


def level1(rng: random.Random) -> tuple[str, list[str], int]:
    op = rng.choice("+-*/")
    if op == "+":
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        c = a + b
    elif op == "-":
        a, b = sorted((rng.randint(10, 999), rng.randint(10, 999)), reverse=True)
        c = a - b
    elif op == "*":
        a, b = rng.randint(10, 99), rng.randint(2, 9)
        c = a * b
    else:
        b, c = rng.randint(2, 9), rng.randint(10, 99)
        a = b * c
    sym = {"*": "*", "/": "/"}.get(op, op)
    return f"What is {a} {sym} {b}?", [f"{a} {sym} {b} = {c}"], c


def level2(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        a, b, c = rng.randint(5, 60), rng.randint(2, 9), rng.randint(2, 12)
        q = f"{name} has {a} {item}. {name} buys {b} packs with {c} {item} in each pack. How many {item} does {name} have now?"
        x = b * c
        return q, [f"{b} * {c} = {x}", f"{a} + {x} = {a + x}"], a + x
    if kind == 1:
        a, b, c = rng.randint(30, 200), rng.randint(5, 29), rng.randint(2, 50)
        q = f"{name} had {a} {item} and gave away {b} of them. Then {name} found {c} more. How many {item} does {name} have now?"
        return q, [f"{a} - {b} = {a - b}", f"{a - b} + {c} = {a - b + c}"], a - b + c
    if kind == 2:
        a, b = rng.randint(3, 15), rng.randint(2, 9)
        c = rng.randint(1, a * b - 1)
        q = f"A box holds {a} {item}. {name} fills {b} boxes and then uses {c} of the {item}. How many {item} are left?"
        return q, [f"{a} * {b} = {a * b}", f"{a * b} - {c} = {a * b - c}"], a * b - c
    a, b, c = rng.randint(2, 12), rng.randint(2, 9), rng.randint(1, 20)
    q = f"{name} shares {a * b} {item} equally among {b} friends. Each friend then gets {c} more {item}. How many {item} does each friend have?"
    return q, [f"{a * b} / {b} = {a}", f"{a} + {c} = {a + c}"], a + c


def level3(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(3)
    if kind == 0:
        a, b, c = rng.randint(5, 60), rng.randint(2, 9), rng.randint(2, 12)
        d = rng.randint(2, a + b * c - 1)
        q = (f"{name} has {a} {item}. {name} buys {b} packs with {c} {item} in each pack, "
             f"then gives {d} {item} to a friend. How many {item} does {name} have left?")
        x = b * c
        return q, [f"{b} * {c} = {x}", f"{a} + {x} = {a + x}", f"{a + x} - {d} = {a + x - d}"], a + x - d
    if kind == 1:
        a, b, c = rng.randint(5, 40), rng.randint(2, 5), rng.randint(1, 9)
        x = a * b
        q = (f"{name} reads {a} pages on Monday and {b} times as many pages on Tuesday. On Wednesday "
             f"{name} reads {c} pages fewer than on Tuesday. How many pages does {name} read in the three days?")
        return q, [f"{a} * {b} = {x}", f"{x} - {c} = {x - c}", f"{a} + {x} + {x - c} = {a + x + x - c}"], a + x + x - c
    a, b, c = rng.randint(2, 9), rng.randint(3, 12), rng.randint(2, 6)
    total = a * b * c
    d = rng.randint(1, total - 1)
    q = (f"A store has {a} shelves. Each shelf has {b} boxes and each box holds {c} {item}. "
         f"The store sells {d} {item}. How many {item} are left?")
    return q, [f"{a} * {b} = {a * b}", f"{a * b} * {c} = {total}", f"{total} - {d} = {total - d}"], total - d


LEVELS = {1: level1, 2: level2, 3: level3}


@register("arithmetic")
class Arithmetic(Task):
    configs = ("1-3", "1", "2", "3", "1-2", "2-3")
    splits = ("train", "validation", "test")

    @property
    def levels(self) -> list[int]:
        lo, _, hi = self.config.partition("-")
        return list(range(int(lo), int(hi or lo) + 1))

    def _generate(self, split: str, n: int) -> list[Sample]:
        """The first `n` questions of the seeded stream that belong to `split` (`generated_split`)."""
        seed = int(self.options.get("seed", 0))
        rng = random.Random(f"arithmetic-{split}-{seed}")

        def draw(i: int) -> tuple[str, Callable[[], Sample]]:
            level = self.levels[i % len(self.levels)]
            question, steps, answer = LEVELS[level](rng)
            return question, lambda: Sample(id=f"arith-{split}-{seed}-{i}", question=question, answer=str(answer),
                                            solution="\n".join(steps), meta={"level": level})

        return generate_split(split, n, draw, f"arithmetic ({self.config})")

    def load_split(self, split: str) -> list[Sample]:
        size = {"test": ("test_size", 300), "validation": ("validation_size", 500)}.get(split, ("train_size", 10000))
        return self._generate(split, int(self.options.get(*size)))
