"""``python -m papers.iresnet.train --config papers/iresnet/configs/smoke/moons_iresnet.yaml``"""

from common.run.entry import entry_point

# `--help` answers before torch is imported; CONFIG, OBJECTIVE, build_model and the config
# classes come from papers/iresnet/config.py (also as papers.iresnet.train.<name>).
main, __getattr__ = entry_point("iresnet")

if __name__ == "__main__":
    main()
