#!/usr/bin/env bash
# The default pipeline end to end on generated photos, to check the first run's time
# (docs/speed.md): B6 with random weights (what real weights cost), params.yaml as shipped but
# features.weights null and a small subset; 500x375 photos as in VOC.
#   bash bench/first_run.sh [N_TRAIN] [N_EVAL] [WORKDIR]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
N_TRAIN=${1:-100}; N_EVAL=${2:-100}; W=${3:-$(mktemp -d)}
export PATH=$REPO/.venv/bin:$PATH FEWLABEL_CACHE_DIR=$W/cache PYTHONDONTWRITEBYTECODE=1
cd "$REPO" && python - "$W" "$N_TRAIN" "$N_EVAL" <<'PY'
import sys
from tests.vocgen import make_voc
make_voc(f"{sys.argv[1]}/voc", year=2007, n_train=int(sys.argv[2]), n_eval=int(sys.argv[3]), image_size=(500, 375))
PY
P=$W/project; mkdir -p "$P/suggestions"
cp -r "$REPO"/{dvc.yaml,params.yaml,.gitignore,.dvcignore,stages,fewlabel} "$P"/
cp "$REPO/suggestions/labelled.txt" "$P/suggestions/"
cd "$P" && git init -q && dvc init -q && cp -r "$REPO"/.dvc/{config,plots} .dvc/
python -c "import sys; sys.path.insert(0, '$REPO'); from tests.conftest import edit_params; edit_params('params.yaml', {'data.source': '$W/voc/VOCdevkit', 'features.weights': None, 'subset.n_images': $N_TRAIN, 'subset.min_per_class': 3})"
time dvc repro
echo "featurize again, empty feature cache (the converted model kept):"
rm -rf "$W/cache/features"
time dvc repro -f -s featurize
uptime
