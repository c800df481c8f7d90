"""The bundled models. Adding a model: one folder here plus one ``register`` line below."""
from ktt.registry import register

register("tfidf_lsgd", "models.tfidf_lsgd.tfidf_lsgd:TfidfLSGD")
register("tfidf_hsgd", "models.tfidf_hsgd.tfidf_hsgd:TfidfHSGD")
register("db_linear", "models.db_linear.db_linear:DBLinear")
register("db_bhcn", "models.db_bhcn.db_bhcn:DBBHCN")
register("db_bhcn_awx", "models.db_bhcn_awx.db_bhcn_awx:DBBHCNAWX")
register("db_ahmcnf", "models.db_ahmcnf.db_ahmcnf:DBAHMCNF")
register("db_achmcnn", "models.db_achmcnn.db_achmcnn:DBACHMCNN")
