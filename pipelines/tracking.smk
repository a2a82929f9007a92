# The MLflow store is created once, before any training job starts: parallel creation of a
# fresh SQLite store corrupts it, and on any store MLflow's set_experiment is a
# search-then-create race. Training jobs take it as ancient() input, so their writes
# (which touch the file) never make Snakemake think the runs are out of date.


rule mlflow_store:
    """The MLflow store every training job logs to, with one experiment per paper."""
    output:
        STORE,
    params:
        py=PY,
        tracking_uri=TRACKING_URI,
        papers=PAPERS,
    log:
        "runs/logs/mlflow_store.log",
    conda:
        ENV
    localrule: True
    shell:
        "{params.py:q} -m common.run.tracking init --tracking-uri {params.tracking_uri:q}"
        " --experiments {params.papers:q} > {log:q} 2>&1 && touch {output:q}"


# End this invocation's MLflow parent runs (end_pipeline in common.smk).
onsuccess:
    end_pipeline("FINISHED")


onerror:
    end_pipeline("FAILED")
