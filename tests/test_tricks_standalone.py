"""llm_tricks is standalone: no file mentions llm_dojo, and every module imports with llm_dojo unimportable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import llm_tricks

TRICKS_DIR = Path(llm_tricks.__file__).parent
REPO_ROOT = TRICKS_DIR.parent


def test_no_source_or_readme_in_llm_tricks_mentions_llm_dojo():
    files = sorted(p for p in TRICKS_DIR.rglob("*") if p.suffix in (".py", ".md"))
    assert len(files) > 10  # the walk really found the package's files
    offenders = [str(p.relative_to(REPO_ROOT)) for p in files if "llm_dojo" in p.read_text(encoding="utf-8")]
    assert offenders == []


IMPORT_EVERY_MODULE = """
import importlib, pkgutil, sys
sys.modules["llm_dojo"] = None  # any `import llm_dojo...` now raises ImportError
import llm_tricks
names = ["llm_tricks"] + [m.name for m in pkgutil.walk_packages(llm_tricks.__path__, "llm_tricks.")]
for name in names:
    importlib.import_module(name)
assert "llm_tricks.demo" in names and "llm_tricks.lora" in names, names
assert not any(n == "llm_dojo" or n.startswith("llm_dojo.") for n, m in sys.modules.items() if m is not None)
print(len(names))
"""


def test_every_llm_tricks_module_imports_without_llm_dojo():
    result = subprocess.run([sys.executable, "-c", IMPORT_EVERY_MODULE], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) > 8
