#!/usr/bin/env bash
# Replays the one-line bugs of the test audit (issue 17) against the fast tests that must catch them.
# Each mutation is applied, the tests run, the file restored with `git checkout`. Needs a clean tree.
#   bash scripts/mutation_audit.sh
set -uo pipefail
cd "$(dirname "$0")/.."
[ -z "$(git status --porcelain ktt models)" ] || { echo "ktt/ or models/ has local changes: commit or stash first"; exit 2; }
PY=.venv/bin/python
survived=0
mutate() {  # FILE OLD NEW TESTS...
  local f=$1 old=$2 new=$3; shift 3
  $PY - "$f" "$old" "$new" <<'PYEOF' || exit 2
import sys
p, old, new = sys.argv[1:]
s = open(p).read()
assert s.count(old) == 1, f"{p}: expected one {old!r}, found {s.count(old)}"
open(p, "w").write(s.replace(old, new))
PYEOF
  if timeout 900 $PY -m pytest -q -x -p no:cacheprovider "$@" >/dev/null 2>&1; then
    echo "SURVIVED  $f: $old -> $new"; survived=$((survived + 1))
  else
    echo "killed    $f: $old -> $new"
  fi
  git checkout -q "$f"
}
T="tests/test_metrics.py tests/test_hierarchy.py tests/test_properties.py"
mutate ktt/metrics.py '(y_true == y_pred).all(axis=1)' '(y_true == y_pred).any(axis=1)' $T
mutate ktt/metrics.py 'float(2 * hp * hr / (hp + hr))' 'float((hp + hr) / 2)' $T
mutate ktt/metrics.py 'average="micro"' 'average="weighted"' $T
mutate ktt/metrics.py 'inter / p_set.sum(), inter / t_set.sum()' 'inter / t_set.sum(), inter / p_set.sum()' $T
mutate ktt/hierarchy.py 'self.path_log_scores(logs).argmax(axis=1)' 'self.path_log_scores(logs).argmin(axis=1)' $T
mutate models/db_bhcn/db_bhcn.py 'parent_of_pred = parents[i + 1][logp[i + 1].argmax(1)]' 'parent_of_pred = codes[:, i]' \
  tests/test_losses.py tests/test_properties.py
mutate ktt/monitoring/sidecar.py 'is_drift(value["share"], float(self.cfg.get("drift_share", 0.5)))' 'is_drift(value["share"], 0.5)' \
  tests/test_monitoring.py::test_no_drift_on_same_distribution_and_drift_on_another tests/test_monitoring.py::test_drift_decision
mutate models/db_achmcnn/db_achmcnn.py 'out = torch.where(positive, mcm(z.masked_fill(~positive, -1e9), mask), mcm(z, mask))' \
  'out = mcm(z, mask)' tests/test_losses.py
mutate ktt/experiment.py 'reverse=order == "max"' 'reverse=order != "max"' tests/test_experiment.py::test_ranking_in_both_directions
mutate ktt/serving/runtime.py 'if len(t) > MAX_TEXT_CHARS:' 'if len(t) >= MAX_TEXT_CHARS:' tests/test_parse_request.py
mutate ktt/serving/runtime.py 'if len(texts) > MAX_TEXTS_PER_REQUEST:' 'if len(texts) > MAX_TEXTS_PER_REQUEST + 1:' tests/test_parse_request.py
echo "$survived survived"
[ "$survived" = 0 ]
