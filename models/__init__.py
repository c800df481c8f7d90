"""The bundled models. Adding a model: one folder here plus one ``register`` line below."""
from ktt.registry import register

register("tfidf_lsgd", "models.tfidf_lsgd.tfidf_lsgd:TfidfLSGD")
register("tfidf_hsgd", "models.tfidf_hsgd.tfidf_hsgd:TfidfHSGD")
