#!/bin/bash
# Issue 22 phase 1, the whole study (bench/pooling.py): extract once per (backbone, size) with
# flip, check the bench against the product, time the product's extraction, score every config
# over 5 draws. Cached: a rerun only computes what is missing.
#   nice -n 10 bench/pooling.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS="lite0@352 lite2@384 lite1@352 lite2@352 lite1@384 lite2@260 lite1@240 lite1@360 lite0@448 lite2@448"
$PY bench/pooling.py extract --jobs $JOBS
$PY bench/pooling.py check --job lite0@352 --images 8
$PY bench/pooling.py evaluate --check-kmean lite0@352:avg
[ -f bench/results/pooling_speed.json ] || $PY bench/pooling.py speed --jobs lite0@352 lite1@352 lite2@384 lite2@448 --images 40  # only where no speed file yet

POOLS="avg max gem2 gem3 gem4 avgmax_cat avgmax_sum reg_mean reg_cat"
C=("# 1. Each Lite alone: average pooling, flip (Lite0 352 is today's default)")
for job in lite0@352 lite1@352 lite1@384 lite2@384 lite2@352 lite0@448 lite2@448; do C+=("$job:avg"); done
for job in lite0@352 lite1@352 lite2@384; do
  C+=("# 2. Poolings of $job (1.5x native rounded to 32)")
  for p in $POOLS; do C+=("$job:$p"); done
done
C+=("# 2d. GeM p = 0.5 (Lite0 448)" "lite0@448:avg" "lite0@448:gem05")
C+=("# 3a. Ensembles at 1.5x native (Lite0 352, Lite1 352, Lite2 384)" "lite0@352:avg")
for p in avg reg_mean; do for m in concat l2cat kmean; do
  C+=("lite0@352:$p+lite1@352:$p+lite2@384:$p|$m" "lite1@352:$p+lite2@384:$p|$m" "lite0@352:$p+lite2@384:$p|$m" "lite0@352:$p+lite1@352:$p|$m")
done; done
C+=("lite1@384:avg+lite2@384:avg|kmean" "lite0@352:avg+lite1@384:avg+lite2@384:avg|kmean")
C+=("# 3b. Ensembles all at 352 (what the product does with these .keras files today)" "lite0@352:avg")
for m in concat l2cat kmean; do
  C+=("lite0@352:avg+lite1@352:avg+lite2@352:avg|$m" "lite1@352:avg+lite2@352:avg|$m" "lite0@352:avg+lite2@352:avg|$m")
done
C+=("# 4. Native sizes and multi-size (a&b: the mean of the sizes' vectors, the product's combine: mean)")
C+=("lite0@352:avg" "lite1@240:avg" "lite1@352:avg" "lite1@360:avg" "lite1@384:avg" "lite2@260:avg" "lite2@352:avg" "lite2@384:avg" "lite2@448:avg")
C+=("lite0@352&448:avg" "lite1@240&352:avg" "lite2@260&384:avg" "lite2@384&448:avg")
C+=("lite1@352:avg+lite2@260&384:avg|kmean" "lite0@352:avg+lite1@352:avg+lite2@260&384:avg|kmean")
C+=("lite1@352:avg+lite2@448:avg|concat" "lite1@352:avg+lite2@448:avg|kmean" "lite1@352:avg+lite2@384&448:avg|kmean" "lite0@352:avg+lite1@352:avg+lite2@384&448:avg|kmean")
C+=("# Side study: svm.C on the best pair (the default is C 1)")
C+=("lite1@352:avg+lite2@384:avg|kmean" "lite1@352:avg+lite2@384:avg|kmean;C=0.3" "lite1@352:avg+lite2@384:avg|kmean;C=3" "lite1@352:avg+lite2@384:avg|kmean;C=10")
$PY bench/pooling.py evaluate --draws 5 --json bench/results/pooling.json --configs "${C[@]}" | tee bench/results/pooling.md
