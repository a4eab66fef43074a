"""Build: memories from trajectories (Mem^p's first part).

- :mod:`~memp_cli.build.policies`: what one trajectory becomes under each policy;
- :mod:`~memp_cli.build.runner`: the distill loop (locking, LLM calls, batched writes);
- :mod:`~memp_cli.model.steps`: the one trimmer of the concrete steps a memory keeps;
- :mod:`~memp_cli.build.prompting`: the LLM prompts (the ``prompts/`` folder holds their text);
- :mod:`~memp_cli.build.builtin`: the rule-based offline distiller and keyword extractor.
"""
