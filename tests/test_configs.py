"""Every config file and variant loads from any working directory, through the command-line loader.

Config files import only the installed package (the shared recipes live in
`deeplab_jax.config.recipes`), so `--config=/path/to/configs/voc.py:v3` works outside the
repository.
"""

import glob
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "[a-z]*.py")))

LOADER = """
import importlib.util, sys
from absl import flags
from ml_collections import config_flags

for path in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location("probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for variant in getattr(module, "VARIANTS", ("",)):
        argument = f"{path}:{variant}" if variant else path
        values = flags.FlagValues()  # a fresh set per file, as each command line parses once
        config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
        argv = ["probe", f"--config={argument}", "--config.seed=3"]
        sys.argv = argv  # config_flags reads the overrides from sys.argv
        values(argv)
        config = values.config
        assert config.seed == 3 and config.model.name, argument
        print("loaded", argument, config.dataset.name, config.model.name)
"""


def test_every_config_and_variant_loads_from_another_directory(tmp_path):
    assert {os.path.basename(p) for p in CONFIG_FILES} >= {
        "voc.py", "cityscapes.py", "context.py", "person_part.py", "cocostuff.py", "demo.py"}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", LOADER, *CONFIG_FILES], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = [line for line in out.stdout.splitlines() if line.startswith("loaded")]
    assert len(loaded) >= 25, out.stdout
    assert any("cityscapes.py:v3plus_xception65 cityscapes deeplab_v3plus_xception65" in line
               for line in loaded)
