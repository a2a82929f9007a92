"""``python -m papers.tori_spheres.train --config papers/tori_spheres/configs/cpu/<exp>.yaml``

Fits one flow to one analytic target by reverse KL (:class:`common.run.objectives.ReverseKL`)
and evaluates it.
"""

from common.run.entry import entry_point

# `--help` answers before torch is imported; CONFIG, OBJECTIVE, build_model and the config
# classes come from papers/tori_spheres/config.py (also as papers.tori_spheres.train.<name>).
main, __getattr__ = entry_point("tori_spheres")

if __name__ == "__main__":
    main()
