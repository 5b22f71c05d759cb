"""The original LLM-Dojo entry point, kept for its users: `python main_train.py [CONFIG.yaml] [key=value ...]`.

It does exactly what `dojo train` does; with no config it trains train_args/demo_identity.yaml.
"""

import sys

from llm_dojo.cli import configure_logging
from llm_dojo.recipes.sft import main

if __name__ == "__main__":
    configure_logging()  # INFO logs (on the first process only under torchrun), library chatter silenced
    arguments = sys.argv[1:]
    if not arguments or "=" in arguments[0]:
        arguments = ["train_args/demo_identity.yaml"] + arguments
    sys.exit(main(arguments))
