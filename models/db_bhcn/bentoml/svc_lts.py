"""BentoService of `db_bhcn`: the shared KTT API (ktt/serving/bento.py) over this model's ONNX graphs."""
import bentoml

from ktt.serving.bento import SERVING_ENV, KTTService


@bentoml.env(**SERVING_ENV)
class DBBHCN(KTTService):
    pass


SERVICE = DBBHCN
