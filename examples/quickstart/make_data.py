"""Writes the quickstart's small instruction dataset (data/instructions.jsonl, data/faq.csv).

Everything is generated here, deterministically, from rules and tiny tables: no scraped or
copyrighted text. The tasks are ones a 135M model cannot do well out of the box but learns
quickly (a fixed answer style), so the eval loss visibly falls within a few dozen CPU steps.
A few rows are deliberately bad (duplicates, "As an AI language model" boilerplate, empty
answers) so that the data-prep report has something to show.

    python examples/quickstart/make_data.py
"""
import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).parent / "data"
rng = random.Random(1234)

UNITS = [("kilometres", "metres", 1000), ("metres", "centimetres", 100), ("kilograms", "grams", 1000),
         ("hours", "minutes", 60), ("minutes", "seconds", 60), ("litres", "millilitres", 1000),
         ("days", "hours", 24), ("weeks", "days", 7)]
WORDS = ["garden", "planet", "silver", "window", "rocket", "pencil", "forest", "bridge", "candle", "marble",
         "tunnel", "meadow", "harbor", "lantern", "puzzle", "violet", "copper", "island", "falcon", "ribbon"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
COLOURS = {("red", "blue"): "purple", ("blue", "yellow"): "green", ("red", "yellow"): "orange",
           ("red", "white"): "pink", ("black", "white"): "grey", ("blue", "white"): "light blue"}


def examples():
    for _ in range(90):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        yield f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    for _ in range(60):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        yield f"What is {a} times {b}?", f"{a} times {b} is {a * b}."
    for _ in range(80):
        big, small, k = rng.choice(UNITS)
        n = rng.randint(2, 40)
        yield f"Convert {n} {big} to {small}.", f"{n} {big} is {n * k} {small}."
    for w in WORDS:
        yield f"Spell '{w}' backwards.", f"Backwards, '{w}' is '{w[::-1]}'."
        yield f"How many letters are in '{w}'?", f"'{w}' has {len(w)} letters."
        yield f"Write '{w}' in capital letters.", f"In capital letters, '{w}' is '{w.upper()}'."
    for i, d in enumerate(DAYS):
        yield f"What day comes after {d}?", f"The day after {d} is {DAYS[(i + 1) % 7]}."
        yield f"What day comes before {d}?", f"The day before {d} is {DAYS[(i - 1) % 7]}."
    for (a, b), c in COLOURS.items():
        yield f"What colour do you get by mixing {a} and {b}?", f"Mixing {a} and {b} gives {c}."


def main():
    HERE.mkdir(exist_ok=True)
    rows = [{"instruction": q, "response": a} for q, a in examples()]
    rng.shuffle(rows)
    # Deliberate noise for the data-prep report.
    rows += rows[:8]  # exact duplicates
    rows.append({"instruction": "What is 2 plus 2?", "response": "As an AI language model, I can tell you that 2 plus 2 is 4."})
    rows.append({"instruction": "Spell 'moon' backwards.", "response": ""})
    with open(HERE / "instructions.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(HERE / "faq.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "answer"])
        for n in range(2, 30):
            w.writerow([f"Is {n} an even number?",
                        f"Yes, {n} is even." if n % 2 == 0 else f"No, {n} is odd."])
    print(f"wrote {len(rows)} rows to {HERE / 'instructions.jsonl'} and 28 rows to {HERE / 'faq.csv'}")


if __name__ == "__main__":
    main()
