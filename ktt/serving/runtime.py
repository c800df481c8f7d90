"""Inference for every KTT model: preprocess, score, decode. Encoder models run ``encoder.onnx``
then ``classifier.onnx``; TF-IDF models score their sparse arrays (``tfidf.npz``) with
``ktt.sparse``, at the cost of a text's non-zero features (an ONNX graph would hold the weights
dense, classes x vocabulary).

Imports only numpy, onnxruntime, tokenizers / snowballstemmer, ``ktt.hierarchy`` and ``ktt.confidence``, so the
BentoService and in-process benchmarks share it. Reading requests is ``ktt.serving.requests``;
the rows forwarded to monitoring are ``ktt.schema``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ktt import threads
from ktt.confidence import PathChains, check_level_maps, recalibrate
from ktt.hierarchy import Hierarchy
from ktt.serving.requests import MAX_TEXT_CHARS



def graph_files(folder: str | Path) -> dict[str, Path]:
    """Where an exported model's two graphs (or its arrays) and its serving config live in ``folder``."""
    folder = Path(folder)
    return {"encoder": folder / "encoder.onnx", "classifier": folder / "classifier.onnx",
            "arrays": folder / "tfidf.npz", "config": folder / "serving.json"}


def exported_files(folder: str | Path) -> dict[str, Path]:
    """The files an export in ``folder`` holds: ``arrays`` and ``config`` (TF-IDF models), or
    ``encoder``, ``classifier`` and ``config``."""
    files = graph_files(folder)
    keep = ("arrays", "config") if files["arrays"].is_file() else ("encoder", "classifier", "config")
    return {k: files[k] for k in keep}


class TokenIds:
    """``input: token_ids``: a Hugging Face ``tokenizer`` (JSON) truncating at ``max_len``; the
    encoder graph reads ``input_ids`` and ``attention_mask``."""

    def __init__(self, config: dict):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(config["tokenizer"])
        self.tokenizer.enable_truncation(config["max_len"])
        self.tokenizer.no_padding()  # a saved tokenizer.json may pad; feed() pads each batch itself
        self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0

    def prepare(self, texts: list[str]) -> list:
        return [np.array(e.ids, dtype=np.int64) for e in self.tokenizer.encode_batch(texts)]

    def feed(self, prepared: list) -> dict[str, np.ndarray]:
        ids = np.full((len(prepared), max(len(p) for p in prepared)), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, p in enumerate(prepared):
            ids[i, :len(p)], mask[i, :len(p)] = p, 1
        return {"input_ids": ids, "attention_mask": mask}


class Tfidf:
    """``input: tfidf``: the TF-IDF model's own n-gram index, idf and normalisation (from its
    arrays); ``feed`` makes the sparse TF-IDF rows that :class:`ktt.sparse.NodeClassifiers` scores."""

    def __init__(self, config: dict, arrays: dict):
        from ktt.sparse import NgramIndex

        self.index = NgramIndex.from_arrays(arrays, config["language"])
        self.idf, self.norm = arrays["idf"], config["norm"]

    def prepare(self, texts: list[str]) -> list:
        return list(texts)

    def feed(self, prepared: list):
        from ktt.sparse import tfidf

        return tfidf(self.index.counts(prepared), self.idf, self.norm)


#: How texts become an encoder graph's input, by ``serving_config()["input"]``.
INPUTS = {"token_ids": TokenIds}


class SparseScorer:
    """Scores of a TF-IDF model from its arrays (``tfidf.npz``), in place of the two graphs."""

    def __init__(self, config: dict, hierarchy: Hierarchy, arrays: dict):
        from ktt.sparse import NodeClassifiers

        self.nodes = NodeClassifiers.from_arrays(hierarchy, arrays, config["loss"])
        last = hierarchy.depth - 1  # one classifier over the leaves (tfidf_lsgd), or one per node
        self.h, self.flat = hierarchy, bool((self.nodes.level == last).all() and (self.nodes.single_level == last).all())

    def scores(self, x) -> dict[str, np.ndarray]:
        """``scores``: the model's raw per-level scores (chained, or leaf sums for a flat model),
        all classes concatenated level by level, as the classifier graphs of encoder models give them."""
        levels = self.h.sum_up(self.nodes.leaf_proba(x)) if self.flat else self.h.chain(self.nodes.conditional(x))
        return {"scores": np.concatenate(levels, axis=1)}


def load_arrays(source) -> dict[str, np.ndarray]:
    """A TF-IDF model's arrays: a ``tfidf.npz`` path, or the mapping itself."""
    if isinstance(source, (str, Path)):
        with np.load(source, allow_pickle=False) as f:
            return dict(f)
    return source


class Predictor:
    """Label paths and per-level scores from the exported graphs of one model."""

    def __init__(self, encoder, classifier, config: dict | str):
        """``encoder`` and ``classifier``: onnxruntime sessions, or paths to the graphs; for a
        TF-IDF model (``input: tfidf``) ``encoder`` is None and ``classifier`` its arrays."""
        from ktt.taxonomy import digest

        self.config = json.loads(config) if isinstance(config, str) else config
        self.hierarchy = Hierarchy.from_dict(self.config["hierarchy"])
        check_level_maps(self.config.get("level_maps"), self.hierarchy.depth)  # a bad export fails to load, not per request
        self.taxonomy = self.config.get("taxonomy") or digest(self.hierarchy)  # an export from before versions
        self.sparse = None
        if self.config["input"] == "tfidf":
            arrays = load_arrays(classifier)
            self.input, self.sparse = Tfidf(self.config, arrays), SparseScorer(self.config, self.hierarchy, arrays)
            return
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads.configured() or 0  # 0: onnxruntime's default, every core
        self.encoder, self.classifier = (
            s if isinstance(s, ort.InferenceSession) else
            ort.InferenceSession(s, options, providers=["CPUExecutionProvider"]) for s in (encoder, classifier))
        self.outputs = [o.name for o in self.classifier.get_outputs()]
        self.input = INPUTS[self.config["input"]](self.config)

    @classmethod
    def from_dir(cls, folder: str | Path) -> "Predictor":
        files = exported_files(folder)
        if "arrays" in files:
            return cls(None, files["arrays"], files["config"].read_text())
        return cls(str(files["encoder"]), str(files["classifier"]), files["config"].read_text())

    def prepare(self, texts: list[str]) -> list:
        """Per text, what the encoder graph reads: token ids, or the stemmed text. Run per request,
        so that a text the preprocessing cannot read fails its own request, not a whole batch."""
        return self.input.prepare([t[:MAX_TEXT_CHARS] for t in texts])

    def encode(self, prepared: list) -> np.ndarray:
        """Run the encoder graph on prepared texts (token ids padded to the longest in the batch);
        TF-IDF models: their sparse TF-IDF rows."""
        if self.sparse:
            return self.input.feed(prepared)
        return self.encoder.run(None, self.input.feed(prepared))[0]

    def features(self, texts: list[str]) -> np.ndarray:
        """What the encoder graph makes of the texts: pooled encoder states or TF-IDF vectors."""
        return self.encode(self.prepare(texts))

    def scores(self, features: np.ndarray) -> dict[str, np.ndarray]:
        if self.sparse:
            return self.sparse.scores(features)
        return dict(zip(self.outputs, self.classifier.run(None, {"features": features})))

    def answer(self, out: dict[str, np.ndarray], temperatures=None) -> tuple[np.ndarray, np.ndarray]:
        """The decoded paths and every class's probability (all levels concatenated) from the
        raw ``scores``: ``Model.calibrated``, by the same ``Hierarchy`` methods and settings."""
        h, c = self.hierarchy, self.config
        # an export from before `paths`: TF-IDF and leaf-decoded models scored paths by their leaf
        rule = c.get("paths") or ("leaf" if c["input"] == "tfidf" or c.get("decode") == "leaf" else "joint")
        codes, proba = h.answer_scores(h.split_levels(out["scores"]), rule, c.get("decode", "path"),
                                       self.temperatures if temperatures is None else temperatures)
        return codes, np.concatenate(proba, axis=1)

    @property
    def temperatures(self):
        return self.config.get("temperatures", 1.0)

    @property
    def level_maps(self):
        return self.config.get("level_maps")  # None: exported before them (``Model.level_maps``)

    def chains(self, features) -> tuple[np.ndarray, PathChains]:
        """The decoded paths and what their confidences read (``Model.path_chains``): a chained
        TF-IDF model's from its paths' nodes alone (``NodeClassifiers.search``), any other's from
        every class's probability."""
        if self.sparse and not self.sparse.flat:
            codes, runs = self.sparse.nodes.search(features, self.config.get("decode", "path"))
            return codes, PathChains.of_paths(runs)
        codes, proba = self.answer(self.scores(features), temperatures=1.0)
        return codes, PathChains.gather(self.hierarchy, self.hierarchy.split_levels(proba), codes)

    def leaf_scores(self, features) -> np.ndarray:
        """``(n, n_leaves)``: every leaf's probability (what drift monitoring compares): every
        class scored, so only a monitored service asks for it."""
        return self.answer(self.scores(features))[1][:, self.hierarchy.offsets[-1]:]

    @property
    def threshold(self) -> float:
        """The model's stopping threshold (a request may send its own, or a target precision)."""
        return self.config.get("threshold", 0.0)

    @property
    def max_depth(self) -> int | None:
        """The depth the model's answers stop at, at most (``Model.stop``; None: no cap)."""
        return self.config.get("max_depth")

    def stop_for(self, target_precision: float) -> tuple[float, int | None]:
        """The threshold and depth cap that reach ``target_precision`` on validation
        (``ktt.confidence.stop_for``); ValueError if the export has no precision curve."""
        from ktt.confidence import stop_for

        if not self.config.get("precision_curve"):
            raise ValueError("this model was exported without a precision curve: send a threshold instead")
        return stop_for(self.config["precision_curve"], target_precision)

    def predict(self, texts: list[str], threshold=None, max_depth=None) -> "Answers":
        """Per text, the answered path (``Hierarchy.stop_depths``; ``threshold`` and ``max_depth``:
        one, or one per text; default: the model's own), with what it was read from (:class:`Answers`)."""
        return self.run(self.prepare(texts), threshold, max_depth)

    def run(self, prepared: list, threshold=None, max_depth=None) -> "Answers":
        """``predict`` from ``prepare``'s output."""
        feats = self.encode(prepared)
        codes, chains = self.chains(feats)
        h = self.hierarchy
        conf = recalibrate(h, codes, chains.confidences(self.temperatures), self.level_maps)
        stop = (self.threshold, self.max_depth) if threshold is None else (threshold, max_depth)
        depths = h.stop_depths(codes, conf, *stop)
        return Answers(h.decode(codes, depths), codes, conf, chains, feats)

    def explain(self, ans: "Answers") -> list[dict]:
        """The JSON form of :meth:`run`'s answers: the path, and at each level the class, its
        score (its confidence) and ``top``: the 3 most probable classes under the same parent
        (the alternatives at that step, the class among them); the taxonomy version;
        ``review``: the answer stopped above its path's end (below the threshold)."""
        h, out, ts = self.hierarchy, [], np.broadcast_to(np.asarray(self.temperatures, np.float64),
                                                         (self.hierarchy.depth,))
        full = h.path_depths(ans.codes)
        levels = [ans.chains.siblings(d, ts) for d in range(h.depth)]
        for i, (row, path) in enumerate(zip(ans.codes, ans.paths)):
            answer = []
            for d, c in enumerate(row[:len(path)]):
                values, first, classes = levels[d]
                end = first[i + 1] if i + 1 < len(first) else len(values)
                run, of = values[first[i]:end], classes[first[i]:end]
                run = self._shares(run, of == c, ans.conf[i, d], ans.conf[i, d - 1] if d else 1.0)
                top = [j for j in np.argsort(-run, kind="stable") if not h.is_end(d)[of[j]]][:3]
                answer.append({"level": d + 1, "class": h.levels[d][c][-1], "score": float(ans.conf[i, d]),
                               "top": [{"class": h.levels[d][of[j]][-1], "score": float(run[j])} for j in top]})
            out.append({"path": [lv["class"] for lv in answer], "levels": answer, "taxonomy": self.taxonomy,
                        "review": bool(len(path) < full[i])})
        return out


    @staticmethod
    def _shares(q: np.ndarray, own: np.ndarray, score: float, parent: float) -> np.ndarray:
        """The alternatives' scores at one step: the answered class its ``score``, its siblings
        what is left of the ``parent``'s score, in proportion to their tempered probabilities
        ``q``: mutually exclusive classes sum to their parent's, after the level maps too (each
        mapped alone, three siblings summed to 1.44 under a parent of .87)."""
        rest = q[~own].sum()
        out = q * (max(parent - score, 0.0) / rest if rest > 0 else 0.0)
        out[own] = score
        return out


@dataclass
class Answers:
    """What :meth:`Predictor.run` answers a batch with: per text the class names along the answered
    path, the whole decoded path (``codes``), each level's confidence in it (``conf``), what the
    confidences were read from (``chains``) and the features."""

    paths: list[list[str]]
    codes: np.ndarray
    conf: np.ndarray
    chains: PathChains
    features: object
