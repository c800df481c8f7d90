"""BentoService of `tfidf_lsgd`: the shared KTT API (ktt/serving/bento.py) over this model's ONNX graphs."""
import bentoml

from ktt.serving.bento import SERVING_ENV, KTTService


@bentoml.env(**SERVING_ENV)
class TfidfLSGD(KTTService):
    pass


SERVICE = TfidfLSGD
