#!/usr/bin/env bash
# The README's report pictures: the pages `flowrbc report` writes, rendered by headless Chromium
# (apt-get install -y chromium). Needs the default model: `flowrbc train` (runs/latest).
#
#   bash docs/make_report_pictures.sh        # -> docs/report_example.png, docs/report_cohort.png
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out=$(mktemp -d)
cohort=$(python3 -c "from flowrbc.io.cohort import default_cohort_path; print(default_cohort_path())")

# patient_002: the iron-deficient example patient; RBC count from examples/clinical.csv
python3 -m flowrbc report examples/patient_002.fcs --rbc-count 3.975 -o "$out/patients"
# the built-in cohort (cached by `flowrbc train`), its test split, 20 patient pages
python3 -m flowrbc report "$cohort" -o "$out/cohort" --pages 20

shot() {  # page.html picture.png WIDTH,HEIGHT
  chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
    --disable-sync --no-first-run --user-data-dir="$(mktemp -d)" --hide-scrollbars \
    --screenshot="$2" --window-size="$3" "file://$1" 2>/dev/null
}
shot "$out/patients/patient_002.html" docs/report_example.png 1200,1990
shot "$out/cohort/index.html" docs/report_cohort.png 1200,1880
echo "pages in $out; pictures in docs/"
