"""``python -m papers.realnvp.train --config papers/realnvp/configs/cpu/<exp>.yaml [--set k=v]``"""

from common.run.entry import entry_point

# `--help` answers before torch is imported; CONFIG, OBJECTIVE, build_model and the config
# classes come from papers/realnvp/config.py (also as papers.realnvp.train.<name>).
main, __getattr__ = entry_point("realnvp")

if __name__ == "__main__":
    main()
