"""Work made of several runs or a config plus data, above the engine: ``compare`` (stacks side by
side, k-fold) and the balance report. Nothing here imports a framework."""
