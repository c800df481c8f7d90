"""Every registered model honours the contract: ``ktt.testing.check_model``, the function a model
author outside this repository runs (scikit-learn's ``check_estimator``), on a tiny real set
(BigBasket) and on its own generated one."""
import pytest

from ktt import registry
from ktt.testing import check_model


@pytest.mark.parametrize("name", registry.available())
def test_every_registered_model_honours_the_contract(name, bb300, tiny_encoder, tmp_path):
    params = {"encoder": tiny_encoder} if "encoder" in registry.get(name).defaults else {}
    check_model(name, bb300, tmp_path, **params)


def test_check_model_runs_without_the_repositorys_data(tmp_path):
    """As an author outside the repository calls it: a class, nothing else (generated titles)."""
    check_model(registry.get("tfidf_hsgd"), folder=tmp_path)


def test_check_model_refuses_what_is_not_a_model_and_leaves_no_files(tmp_path, monkeypatch, bb300):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(TypeError, match="is not a ktt.model.Model subclass"):
        check_model(dict)
    check_model("tfidf_lsgd", bb300)
    assert list(tmp_path.iterdir()) == []  # its temp folder is removed


def test_check_model_names_what_breaks(tmp_path, bb300):
    """A model whose fit returns None, or whose test_params name an unknown hyperparameter, fails
    with an AssertionError that says so."""
    base = registry.get("tfidf_lsgd")

    class NoReturn(base):
        def fit(self, train, val, logger=None):
            super().fit(train, val, logger)

    class BadParams(base):
        test_params = {"epochs": 1}
    with pytest.raises(AssertionError, match="fit returns the model"):
        check_model(NoReturn, bb300, tmp_path)
    with pytest.raises(AssertionError, match=r"test_params names hyperparameters it does not declare: \['epochs'\]"):
        check_model(BadParams, bb300, tmp_path)
