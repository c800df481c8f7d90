"""A seeded generator of synthetic product-title rows over a 3-level taxonomy.

This is the default dataset of ``make run``: the repository ships no third-party data.
Titles mix words typical of the leaf, of its parent and of nothing at all, and a share
of rows carry a sibling's label, so models neither fail nor score perfectly. Some names
("Accessories", "Organic") occur under two parents, as in real taxonomies.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import BadValue

# category -> sub-category -> type -> words typical of that type
TAXONOMY = {
    "Food": {
        "Pasta": {"Spaghetti": "spaghetti long durum strands", "Penne": "penne rigate tubes quill",
                  "Fusilli": "fusilli spiral twist corkscrew"},
        "Dairy": {"Milk": "milk toned full-cream litre", "Cheese": "cheese cheddar slices block",
                  "Yogurt": "yogurt curd greek cup"},
        "Organic": {"Grains": "grains millet quinoa brown", "Pulses": "dal lentils moong chana"},
    },
    "Beverages": {
        "Tea": {"Green Tea": "green tea leaves antioxidant", "Black Tea": "assam black tea dust strong"},
        "Coffee": {"Instant Coffee": "instant coffee jar granules", "Beans": "roasted arabica beans whole"},
        "Organic": {"Juice": "cold-pressed juice fruit bottle", "Herbal Drinks": "herbal kadha tulsi brew"},
    },
    "Beauty": {
        "Hair Care": {"Shampoo": "shampoo anti-dandruff hair wash", "Hair Oil": "hair oil coconut amla"},
        "Skin Care": {"Face Wash": "face wash foaming cleanser", "Moisturiser": "moisturiser cream lotion"},
        "Accessories": {"Combs": "comb wide-tooth detangling", "Mirrors": "mirror compact vanity"},
    },
    "Household": {
        "Cleaning": {"Detergent": "detergent powder laundry wash", "Dishwash": "dishwash bar gel utensil"},
        "Kitchen": {"Storage": "container jar airtight storage", "Cookware": "kadai pan non-stick tawa"},
        "Accessories": {"Hangers": "hanger plastic clothes set", "Mops": "mop floor spin bucket"},
    },
}
PARENT_WORDS = {"Food": "fresh tasty", "Beverages": "drink refreshing", "Beauty": "gentle skin",
                "Household": "home durable"}
BRANDS = ["Fresho", "BB Royal", "Tata", "Nestle", "Amul", "Himalaya", "Dabur", "Prestige", "Vim", "Surf"]
FILLER = ["pack", "combo", "value", "premium", "classic", "special", "daily", "family", "new", "best"]
SIZES = ["100 g", "250 g", "500 g", "1 kg", "200 ml", "500 ml", "1 L", "Set of 2", "Pack of 6"]


def generate(n_rows: int = 3000, seed: int = 0, noise: float = 0.05) -> pd.DataFrame:
    """``n_rows`` synthetic rows: ``text`` and ``labels`` (a 3-level path)."""
    if n_rows < 30:
        raise BadValue(f"n_rows must be at least 30, not {n_rows}")
    rng = np.random.default_rng(seed)
    leaves = [(c, s, t, w) for c, subs in TAXONOMY.items() for s, types in subs.items() for t, w in types.items()]
    rows = []
    for _ in range(n_rows):
        c, s, t, words = leaves[rng.integers(len(leaves))]
        parts = [rng.choice(BRANDS)]
        parts += list(rng.choice(words.split(), size=rng.integers(1, 3), replace=False))
        if rng.random() < 0.5:
            parts.append(rng.choice(PARENT_WORDS[c].split()))
        parts += list(rng.choice(FILLER, size=rng.integers(0, 3), replace=False))
        title = " ".join(parts).title() + " - " + rng.choice(SIZES)
        if rng.random() < noise:  # a sibling's label: realistic label noise
            siblings = [x for x in TAXONOMY[c][s] if x != t]
            t = siblings[rng.integers(len(siblings))]
        rows.append({"text": title, "labels": [c, s, t]})
    return pd.DataFrame(rows)
