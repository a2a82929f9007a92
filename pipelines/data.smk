# Data, in two kinds (README, "Data and DVC"):
# - Offline sets (digits, photo patches, 2-D toys) in data/, tracked together by the top-level
#   data.dvc: pulled from the DVC remote if it holds that version, else built (deterministic:
#   a rebuild reproduces the committed hash) and pushed.
# - Downloaded sets: their raw files in downloads/, each tracked by its own committed .dvc file
#   (the published MD5), pulled from the remote or else downloaded, then converted to data/ by
#   Snakemake alone (.dvcignore keeps the converted files out of data.dvc, so a paper-scale
#   run never rewrites a tracked file).
# Two DVC commands in one repo at once fail on its lock: every rule here holds dvc_lock=1.


rule data:
    """The offline datasets under data/: pulled from the DVC remote, or built and pushed."""
    output:
        OFFLINE_DATA,
    params:
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
        if {params.py:q} -m dvc pull --quiet data.dvc > {log:q} 2>&1; then
            echo "data.dvc pulled from the DVC remote" >> {log:q}
        else
            echo "data.dvc not in the DVC remote: building" >> {log:q}
            {params.py:q} -m common.data prepare --root data >> {log:q} 2>&1
            {params.py:q} -m dvc add --quiet data >> {log:q} 2>&1
        fi
        {params.py:q} -m dvc push --quiet data.dvc >> {log:q} 2>&1 \
            || echo "warning: could not push data.dvc to the DVC remote" | tee -a {log:q} >&2
        """


rule download:
    """A downloaded dataset: its raw files pulled from the DVC remote or else downloaded
    (checksums verified) and pushed, then converted to data/<file> (Snakemake's alone)."""
    input:
        lambda wc: raw_dvc_files(online_name(wc.online)),
    output:
        "data/{online}.npz",
    wildcard_constraints:
        online="|".join(ONLINE_STEMS),
    params:
        name=lambda wc: online_name(wc.online),
        py=PY,
    log:
        "runs/logs/download_{online}.log",
    conda:
        ENV
    localrule: True
    resources:
        dvc_lock=1,
    shell:
        """
        export DVC_NO_ANALYTICS=1
        {{ {params.py:q} -m dvc pull --quiet {input:q} \
            || echo {params.name:q}": not in the DVC remote, downloading"; }} > {log:q} 2>&1
        {params.py:q} -m common.data prepare --no-offline --root data \
            --datasets {params.name:q} >> {log:q} 2>&1
        {{ {params.py:q} -m common.data stash --datasets {params.name:q} \
            && {params.py:q} -m dvc push --quiet {input:q}; }} >> {log:q} 2>&1 \
            || echo "warning: could not push the raw files of "{params.name:q}" to the DVC remote" \
            | tee -a {log:q} >&2
        """
