# The MLflow store is created once, before any training job starts: parallel creation of a
# fresh SQLite store corrupts it. Training jobs take it as ancient() input, so their writes
# (which touch the file) never make Snakemake think the runs are out of date.


rule mlflow_store:
    output:
        MLFLOW_DB,
    localrule: True
    shell:
        "{PY:q} -m common.run.tracking init --tracking-uri {TRACKING_URI:q} --experiments {PAPERS:q}"
