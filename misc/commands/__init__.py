"""The command lines, one module each (``python -m misc.commands.<name>``,
console scripts ``stackgan-<name>`` once installed, and the repository's
scripts stageI/run_exp.py, stageII/run_exp.py, demo/demo.py, demo/embed.py,
data/generate_shapes.py, data/build_dataset.py).  Each parses its arguments first (--help needs no
TensorFlow), then starts TensorFlow (startup.py) and hands the work to the
library; common.py has what they share, stages.py the two stages."""
