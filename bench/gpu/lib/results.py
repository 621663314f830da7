"""The results the multi-GPU stages write (one JSON object per line) as the ratio tables read them
(bench/gpu/multi-gpu.sh, multi-gpu-stages.sh; run from the repository root)."""
import json
import os


def rows(out, name, kind=None):
    """The objects in OUT/NAME (of `kind`, if given); none where the file is missing."""
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return []
    got = [json.loads(line) for line in open(path) if line.strip()]
    return [r for r in got if kind is None or r.get("kind") == kind]
