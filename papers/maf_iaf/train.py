"""``python -m papers.maf_iaf.train --config papers/maf_iaf/configs/cpu/<exp>.yaml [--set k=v]``

MADE, MAF and Real NVP experiments are trained by maximum likelihood; IAF's VAEs
(``model.name: vae``) by the ELBO (:class:`common.run.objectives.VariationalAutoencoder`).
"""

from common.run.entry import entry_point

# `--help` answers before torch is imported; CONFIG, OBJECTIVE, build_model and the config
# classes come from papers/maf_iaf/config.py (also as papers.maf_iaf.train.<name>).
main, __getattr__ = entry_point("maf_iaf")

if __name__ == "__main__":
    main()
