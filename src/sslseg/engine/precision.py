"""The numeric precisions a run accepts, and their Lightning Fabric names: the one list.

Kept free of torch so that the command line and the config checks can read it before torch loads.
"""

#: accepted spelling -> Fabric's name
PRECISIONS: dict[str, str] = {"32": "32-true", "32-true": "32-true", "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
                              "16": "16-mixed", "16-mixed": "16-mixed"}
