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


# -- catalogs shaped like real taxonomies (thousands of categories, paths of depth 1 to D) --------
SYLLABLES = ["ka", "lo", "mi", "ne", "po", "ru", "sa", "ti", "vu", "ze", "bra", "cle", "dro", "fli", "gra",
             "ple", "shu", "tro", "qui", "xan", "mor", "pen", "dal", "rik", "son", "vel", "tam", "gor"]


def pseudo_words(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct pronounceable pseudo-words (2 to 4 syllables)."""
    out, seen = [], set()
    while len(out) < n:
        k = int(rng.integers(2, 5))
        w = "".join(rng.choice(SYLLABLES, size=k))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return np.array(out, dtype=object)


def random_taxonomy(categories: int, depth: int, seed: int = 0, top: int | None = None) -> list[tuple[str, ...]]:
    """``categories`` category paths (every node of the tree, inner ones included) of depth 1 to
    ``depth``, grown as real product taxonomies are: a few dozen top-level categories, most
    categories in the middle levels, and within a level a node drawing children with a
    probability that grows with how many it already has (a few nodes get many, most few)."""
    if not 1 <= depth <= 12:
        raise BadValue(f"depth must be from 1 to 12, not {depth}")
    top = top or max(1, min(categories, round(categories ** 0.4)))
    if categories < top:
        raise BadValue(f"categories must be at least {top}, not {categories}")
    rng = np.random.default_rng(seed)
    names = iter(pseudo_words(categories, rng))
    by_level = [[(str(next(names)).title(),) for _ in range(top)]]  # nodes per level
    kids = [[0] * top]
    # the level a new category lands on: a bell over levels 2..depth peaking near 60% of the depth
    # (Google's taxonomy: 21 / 190 / 1,300 / 2,200 / 1,400 / 400 / 50 categories at levels 1-7)
    levels = np.arange(2, depth + 1)
    share = np.exp(-((levels - (1 + 0.53 * (depth - 1))) ** 2) / (2 * 1.2 ** 2))
    for _ in range(categories - top):
        want = int(rng.choice(levels, p=share / share.sum())) if depth > 1 else 1
        up = min(want - 1, len(by_level)) - 1  # the parent's level (the deepest one so far, if shallower)
        if up < 0:
            raise BadValue(f"{categories} categories do not fit in depth 1 with {top} top-level ones")
        k = np.asarray(kids[up], dtype=float) + 1  # preferential attachment: big nodes grow bigger
        parent = int(rng.choice(len(k), p=k / k.sum()))
        kids[up][parent] += 1
        if up + 1 == len(by_level):
            by_level.append([])
            kids.append([])
        by_level[up + 1].append(by_level[up][parent] + (str(next(names)).title(),))
        kids[up + 1].append(0)
    nodes = [p for lv in by_level for p in lv]
    return nodes


def read_taxonomy(path) -> list[tuple[str, ...]]:
    """Category paths from a text file, one per line (``A > B > C``; Google's product taxonomy
    format, with or without ``id - `` in front; ``#`` lines are comments). Every prefix of a
    path is a category too."""
    import re
    from pathlib import Path

    paths = set()
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = re.sub(r"^\d+\s+-\s+", "", line.strip())
        if not line or line.startswith("#"):
            continue
        parts = tuple(p.strip() for p in line.split(">"))
        if not all(parts):
            raise BadValue(f"{path}, line {n}: empty category name in {line!r}")
        paths.update(parts[:k] for k in range(1, len(parts) + 1))
    if not paths:
        raise BadValue(f"{path}: no category paths")
    return sorted(paths)


def generate_catalog(rows: int, taxonomy: list[tuple[str, ...]], seed: int = 0, noise: float = 0.05,
                     inner: float = 0.1, chunk: int = 200_000):
    """Yield DataFrames (``text``, ``labels`` as ``A > B > C``) of ``rows`` product titles over ``taxonomy``, in
    chunks (bounded memory at any size). Rows fall on categories Zipf-wise; a share ``inner`` is
    labelled at an inner category (a product filed under "Pasta", not a kind of pasta). A title
    holds words of its category and its ancestors, a brand and filler; a share ``noise`` carries
    a sibling's label."""
    if rows < 30:
        raise BadValue(f"rows must be at least 30, not {rows}")
    if not 0 <= noise < 1 or not 0 <= inner < 1:
        raise BadValue(f"noise and inner must be in [0, 1), not {noise} and {inner}")
    rng = np.random.default_rng(seed)
    paths = sorted(taxonomy)
    index = {p: i for i, p in enumerate(paths)}
    parent = np.array([index.get(p[:-1], -1) for p in paths])
    has_kids = np.zeros(len(paths), bool)
    has_kids[parent[parent >= 0]] = True
    leaves, inners = np.flatnonzero(~has_kids), np.flatnonzero(has_kids)
    # siblings, for label noise: nodes sharing a parent (top level: the other top-level nodes)
    order = np.lexsort((np.arange(len(paths)), parent))
    starts = np.searchsorted(parent[order], parent)
    counts = np.bincount(parent + 1)[parent + 1]
    words = pseudo_words(3 * len(paths) + 600, rng)
    own = words[:3 * len(paths)].reshape(-1, 3)
    brands, filler = words[3 * len(paths):3 * len(paths) + 500], words[-100:]
    sizes = np.array(["100 g", "250 g", "500 g", "1 kg", "200 ml", "1 L", "Pack of 6", "Set of 2", "XL", "M"])

    def zipf(n):
        w = 1.0 / np.arange(1, n + 1) ** 0.8
        return rng.permutation(w / w.sum())

    p_leaf, p_inner = zipf(len(leaves)), zipf(max(1, len(inners)))
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        at_inner = (rng.random(n) < inner) & (len(inners) > 0)
        node = np.where(at_inner, inners[rng.choice(len(inners) or 1, n, p=p_inner)] if len(inners) else 0,
                        leaves[rng.choice(len(leaves), n, p=p_leaf)])
        up = np.where(parent[node] >= 0, parent[node], node)  # a word of the parent, when there is one
        cols = [brands[rng.integers(len(brands), size=n)], own[node, rng.integers(3, size=n)],
                own[node, rng.integers(3, size=n)], own[up, rng.integers(3, size=n)]]
        extra = rng.random(n)
        cols.append(np.where(extra < 0.6, filler[rng.integers(len(filler), size=n)], ""))
        cols.append(np.where(extra < 0.3, sizes[rng.integers(len(sizes), size=n)], ""))
        text = [" ".join(w for w in ws if w).title() for ws in zip(*cols)]
        flip = (rng.random(n) < noise) & (counts[node] > 1)
        sib = order[starts[node] + rng.integers(0, np.maximum(counts[node], 1))]
        label = np.where(flip, sib, node)
        names = np.array([" > ".join(p) for p in paths], dtype=object)
        yield pd.DataFrame({"text": text, "labels": names[label]})
