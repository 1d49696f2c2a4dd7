"""msixlab's own mutation suite (``make mutate``): planted bugs the verdict must catch.

Concepts: ``catalogue.py`` lists the mutants (each a set of exact textual replacements,
the bug it plants and the checks expected to catch it); ``run.py`` applies each one to a
scratch copy of the project, runs the main job against that copy and judges whether the
verdict caught the bug (docs/mutate.md).
"""
