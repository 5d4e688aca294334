"""Two offline text classification tasks, generated from templates written for heterogui.

- "topics": which of sports, food, technology, weather a sentence is about (4 classes).
- "sentiment": whether a short review is positive or negative (2 classes).

The two tasks have disjoint label sets, so a merged model keeps one head per task (docs/method.md
secs. 10, 11): global class ids 0-3 are the topics, 4-5 the sentiments. Sentences are drawn without
replacement from the template combinations with a seeded generator, then split into train,
test and calibration parts; the same seed always gives the same sentences.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

TOPICS = ("sports", "food", "technology", "weather")
SENTIMENTS = ("negative", "positive")
TASK_CLASSES = {"topics": (0, 1, 2, 3), "sentiment": (4, 5)}
# Global class id of every label name (a classifier's id2label names its outputs with them).
LABELS = {name: i for i, name in enumerate((*TOPICS, *SENTIMENTS))}
# Labels that are none of the above get ids from this offset up (see ``label_id``).
OTHER_LABELS = 1_000_000


def label_id(name: str) -> int:
    """Return the global class id of a label name.

    Built-in labels ("sports" ... "positive") have their task ids, integer labels ("7") are
    their value, and any other name a fixed id derived from its text (crc32), so that two
    classifiers whose labels differ get disjoint classes and an evaluation file that names the
    labels maps to the same ids.
    """
    if name in LABELS:
        return LABELS[name]
    if name.isascii() and name.isdigit():
        return int(name)
    return OTHER_LABELS + zlib.crc32(name.encode("utf-8"))


SPLITS = {"train": 0.5, "test": 0.25, "calibration": 0.25}
PER_CLASS = {"topics": 200, "sentiment": 300}

_SUBJECTS = (
    "My brother",
    "The reporter",
    "Everyone at work",
    "Our neighbour",
    "The old man",
    "A student",
    "She",
    "He",
    "They",
    "We",
    "My aunt",
    "The whole class",
)
_TIMES = ("yesterday", "this morning", "last weekend", "every day", "on Sunday", "again", "today")
_TOPIC_PHRASES = {
    "sports": (
        "watched the tennis final",
        "scored a goal in the match",
        "trained for the marathon",
        "cheered for the home team",
        "talked about the basketball playoffs",
        "bought new running shoes for the race",
        "won the cycling race",
        "joined the local football club",
        "practised swimming at the pool",
        "followed the cricket score",
    ),
    "food": (
        "baked a chocolate cake",
        "cooked spicy noodles for dinner",
        "tried the new sushi restaurant",
        "made fresh lemonade",
        "ordered a pizza with mushrooms",
        "shared a recipe for lentil soup",
        "bought fresh vegetables at the market",
        "grilled fish on the barbecue",
        "ate pancakes with honey",
        "complained that the curry was too salty",
    ),
    "technology": (
        "installed the latest software update",
        "bought a new laptop",
        "fixed a bug in the code",
        "set up a home wifi network",
        "tested the new smartphone camera",
        "read about artificial intelligence",
        "replaced the broken keyboard",
        "backed up the photos to the cloud",
        "built a small robot",
        "upgraded the graphics card",
    ),
    "weather": (
        "noticed the thunderstorm coming",
        "stayed inside because of the heavy snow",
        "checked the forecast for rain",
        "enjoyed the warm sunshine",
        "said the wind was very strong",
        "saw fog covering the valley",
        "felt the temperature drop below zero",
        "watched the hail hit the roof",
        "waited for the heatwave to end",
        "saw a rainbow after the shower",
    ),
}
_ITEMS = (
    "hotel room",
    "movie",
    "pair of headphones",
    "book",
    "customer service",
    "concert",
    "jacket",
    "coffee machine",
    "train ride",
    "museum tour",
    "video game",
    "dentist visit",
)
_REVIEW = {
    "positive": {
        "adj": (
            "wonderful",
            "excellent",
            "delightful",
            "fantastic",
            "really comfortable",
            "surprisingly good",
            "amazing",
            "lovely",
        ),
        "clause": (
            "exceeded all my expectations",
            "made my whole week better",
            "worked perfectly from day one",
            "was worth every penny",
        ),
        "templates": (
            "The {item} was {adj}.",
            "This {item} was simply {adj}!",
            "I would recommend this {item} to anyone, it was {adj}.",
            "Honestly, the {item} {clause}.",
            "{subj} said the {item} {clause}.",
        ),
    },
    "negative": {
        "adj": (
            "terrible",
            "awful",
            "disappointing",
            "really uncomfortable",
            "a complete waste of money",
            "boring",
            "horrible",
            "poorly made",
        ),
        "clause": (
            "broke after two days",
            "ruined the whole evening",
            "never worked properly",
            "was not worth the price",
        ),
        "templates": (
            "The {item} was {adj}.",
            "This {item} was simply {adj}, honestly.",
            "I would never pay for this {item} again, it was {adj}.",
            "Honestly, the {item} {clause}.",
            "{subj} said the {item} {clause}.",
        ),
    },
}


@dataclass(frozen=True)
class TextSplit:
    """Sentences with global class ids (see TASK_CLASSES)."""

    sentences: tuple[str, ...]
    labels: tuple[int, ...]


def _topic_sentences() -> list[tuple[str, int]]:
    out = []
    for label, topic in enumerate(TOPICS):
        for subj in _SUBJECTS:
            for phrase in _TOPIC_PHRASES[topic]:
                for when in _TIMES:
                    out.append((f"{subj} {phrase} {when}.", label))
    return out


def _review_sentences() -> list[tuple[str, int]]:
    out = set()
    for offset, mood in enumerate(SENTIMENTS):
        words = _REVIEW[mood]
        for template in words["templates"]:
            for item in _ITEMS:
                for adj in words["adj"]:
                    for clause, subj in zip(words["clause"], _SUBJECTS, strict=False):
                        text = template.format(item=item, adj=adj, clause=clause, subj=subj)
                        out.add((text, TASK_CLASSES["sentiment"][offset]))
    return sorted(out)


def make_task(name: str, per_class: int | None = None, seed: int = 0) -> dict[str, TextSplit]:
    """Return the train / test / calibration splits of task ``name``.

    per_class: sentences drawn per class before splitting (default PER_CLASS[name]).

    Raises:
        ValueError: unknown task, or more sentences asked for than the templates make.
    """
    if name not in TASK_CLASSES:
        raise ValueError(f"unknown text task {name!r}; use one of {sorted(TASK_CLASSES)}")
    per_class = PER_CLASS[name] if per_class is None else per_class
    pool = _topic_sentences() if name == "topics" else _review_sentences()
    rng = random.Random(f"{name}:{seed}")
    splits: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    for label in TASK_CLASSES[name]:
        items = [p for p in pool if p[1] == label]
        if per_class > len(items):
            raise ValueError(f"task {name} has only {len(items)} sentences of class {label}")
        chosen = rng.sample(items, per_class)
        start = 0
        for split, fraction in SPLITS.items():
            count = round(fraction * per_class) if split != "calibration" else per_class - start
            splits[split] += chosen[start : start + count]
            start += count
    result = {}
    for split, pairs in splits.items():
        rng.shuffle(pairs)
        result[split] = TextSplit(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))
    return result


def calibration_sentences_rule(count: int) -> str:
    """Return why ``calibration_sentences(count)`` holds other than ``count`` sentences."""
    held = {name: len(make_task(name)["calibration"].sentences) for name in TASK_CLASSES}
    listed = ", ".join(f"{name} {n}" for name, n in held.items())
    even = 2 * min(held.values())
    if count > even:  # a task ran short: the others give up to count // 2 each, not as many
        return (
            f"the built-in calibration sentences are {listed}, and each task gives at most "
            f"half the size: give at most {even} for equal halves"
        )
    tasks = len(TASK_CLASSES)
    return f"the built-in sentences are half from each of their {tasks} tasks: give an even size"


def calibration_sentences(count: int = 256, seed: int = 0) -> list[str]:
    """Return unlabelled calibration sentences, half from each task's calibration split.

    The splits are seed 0's, the ones the text-task pair trains and is tested on, whatever
    the seed: seed 0 takes each split's first sentences, another seed a random draw from the
    same split. Never a training or test sentence (re-splitting the tasks with the seed drew
    about 35 test and 60-70 training sentences into a draw of 256).
    """
    out: list[str] = []
    rng = random.Random(seed)
    for name in TASK_CLASSES:
        pool = make_task(name)["calibration"].sentences
        take = min(count // 2, len(pool))
        out += pool[:take] if seed == 0 else rng.sample(pool, take)
    rng.shuffle(out)
    return out
