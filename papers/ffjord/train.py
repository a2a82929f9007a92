"""``python -m papers.ffjord.train --config papers/ffjord/configs/smoke/moons_ffjord.yaml``"""

from common.run.entry import entry_point

# `--help` answers before torch is imported; CONFIG, OBJECTIVE, build_model and the config
# classes come from papers/ffjord/config.py (also as papers.ffjord.train.<name>).
main, __getattr__ = entry_point("ffjord")

if __name__ == "__main__":
    main()
