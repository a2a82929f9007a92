# Data: pulled from the DVC remote if it holds the version data.dvc names, otherwise built
# (offline sets) or downloaded (paper-scale sets), then recorded with `dvc add` and pushed.
# The offline build is deterministic, so a rebuild reproduces the hash in data.dvc.
# One local rule owns every DVC call: two DVC commands in one repo at once fail on its lock.


rule data:
    """Every dataset this profile needs under data/: pulled from DVC, built or downloaded."""
    output:
        OFFLINE_DATA + [str(dataset_path(name)) for name in online_datasets()],
    params:
        online=online_datasets(),
        py=PY,
    log:
        "runs/logs/data.log",
    conda:
        ENV
    localrule: True
    resources:
        dvc_lock=1,
    shell:
        """
        export DVC_NO_ANALYTICS=1
        {{ {params.py:q} -m dvc pull --quiet data.dvc || echo "data.dvc not in the DVC remote: building"; }} > {log:q} 2>&1
        {params.py:q} -m common.data prepare --root data --datasets {params.online:q} >> {log:q} 2>&1
        {params.py:q} -m dvc add --quiet data >> {log:q} 2>&1
        {params.py:q} -m dvc push --quiet data.dvc >> {log:q} 2>&1
        """
