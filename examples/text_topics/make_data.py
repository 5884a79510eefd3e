"""Writes the example's ``train.parquet`` / ``val.parquet``: sentences about four topics
(label = topic), most words from the topic's list, the rest common words.

    python examples/text_topics/make_data.py
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TOPICS = {
    "sports": "goal match team score player coach league ball win",
    "weather": "rain sun cloud wind storm snow cold warm forecast",
    "food": "bread soup cheese apple dinner cook taste salt kitchen",
    "music": "song guitar drum band concert melody sing piano album",
}
COMMON = "the a today we they it was very and of big new".split()


def sentence(rng: random.Random, topic: str) -> str:
    words = TOPICS[topic].split()
    return " ".join(rng.choice(words) if rng.random() < 0.6 else rng.choice(COMMON) for _ in range(rng.randint(5, 10)))


def write(path: Path, num_rows: int, seed: int) -> None:
    rng = random.Random(seed)
    labels = [rng.randrange(len(TOPICS)) for _ in range(num_rows)]
    names = list(TOPICS)
    table = pa.table({"text": [sentence(rng, names[label]) for label in labels], "label": pa.array(labels, pa.int64())})
    pq.write_table(table, path, compression="zstd")


if __name__ == "__main__":
    here = Path(__file__).parent
    write(here / "train.parquet", 240, seed=0)
    write(here / "val.parquet", 80, seed=1)
    (here / "vocab.txt").write_text("\n".join([*COMMON, *(w for words in TOPICS.values() for w in words.split())]) + "\n")
