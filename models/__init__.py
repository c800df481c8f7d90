"""The bundled models. Adding a model: one folder here plus one line in ``MODELS``.

Each entry is ``"name": "module:Class"``; ``ktt.registry`` imports a module only when its
model is first used, so neither ``ktt`` nor this file imports torch or scikit-learn.
"""
MODELS = {
    "tfidf_lsgd": "models.tfidf_lsgd.tfidf_lsgd:TfidfLSGD",
    "tfidf_hsgd": "models.tfidf_hsgd.tfidf_hsgd:TfidfHSGD",
    "db_linear": "models.db_linear.db_linear:DBLinear",
    "db_bhcn": "models.db_bhcn.db_bhcn:DBBHCN",
    "db_bhcn_awx": "models.db_bhcn_awx.db_bhcn_awx:DBBHCNAWX",
    "db_ahmcnf": "models.db_ahmcnf.db_ahmcnf:DBAHMCNF",
    "db_achmcnn": "models.db_achmcnn.db_achmcnn:DBACHMCNN",
}
