"""``python -m papers.glow.train --config papers/glow/configs/cpu/<exp>.yaml [--set k=v]``"""

from common.run.entry import entry_point

# `--help` answers before torch is imported; CONFIG, OBJECTIVE, build_model and the config
# classes come from papers/glow/config.py (also as papers.glow.train.<name>).
main, __getattr__ = entry_point("glow")

if __name__ == "__main__":
    main()
