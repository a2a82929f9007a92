"""``python -m papers.nice.train --config papers/nice/configs/cpu/digits_nice.yaml [--set k=v]``"""

from common.run.entry import entry_point

# `--help` answers before torch is imported; CONFIG, OBJECTIVE, build_model and the config
# classes come from papers/nice/config.py (also as papers.nice.train.<name>).
main, __getattr__ = entry_point("nice")

if __name__ == "__main__":
    main()
