"""The built-in distiller: scripts and keywords without an LLM (deterministic, offline).

- :mod:`~memp_cli.build.builtin.keywords`: the key phrases of a task;
- :mod:`~memp_cli.build.builtin.actions`: what each step of a run did;
- :mod:`~memp_cli.build.builtin.entities`: the run's specifics lifted into ``{variables}``;
- :mod:`~memp_cli.build.builtin.distiller`: :func:`builtin_script`, the whole script.
"""
