"""Import a reference (TF 0.11/0.12) StackGAN checkpoint into our trainers.

What the reference trainer saved -- network weights, batch-norm moving
statistics, Adam slots and beta powers, ``global_step`` -- is restored by
name; the iteration counter comes from the file name as in the reference
(``model_82000.ckpt`` -> 82000).  Every model variable the checkpoint lacks
and every checkpoint model variable nothing took is reported.
"""

import dataclasses

from misc.tf1_checkpoint import CheckpointError, ReferenceCheckpoint


@dataclasses.dataclass
class ImportReport:
    path: str
    filled: list
    missing: list
    unused: list
    optimizer_state: bool
    counter: int

    def summary(self):
        lines = [f"Imported {len(self.filled)} variables from reference checkpoint {self.path}"
                 f" (counter {self.counter})."]
        if not self.optimizer_state:
            lines.append("No optimizer state was imported (fresh Adam slots).")
        if self.missing:
            lines.append(f"Model variables left at their initial values: {', '.join(self.missing)}")
        if self.unused:
            lines.append(f"Checkpoint model variables not used: {', '.join(self.unused)}")
        return "\n".join(lines)


def network_variables(gan, trainable_only=False):
    """{reference name: variable} over all networks of a trainer."""
    found = {}
    for network in gan.networks().values():
        for name, var in network.reference_variables().items():
            if trainable_only and not var.trainable:
                continue
            found[name] = var
    return found


def import_reference_checkpoint(gan, path, trainable_only=False, scopes=None,
                                optimizer_state=True):
    """Load a reference checkpoint into ``gan`` (a StageIGAN or StageIIGAN).

    ``scopes``: only these network scopes (e.g. ``("g_net", "d_net")`` when a
    Stage-II run starts from a Stage-I checkpoint); ``trainable_only``: skip
    the batch-norm moving statistics (the reference Stage-II does this with a
    Stage-I checkpoint).  Optimizer state is loaded for the optimizers whose
    variables are all loaded, when the checkpoint has it.
    """
    ckpt = ReferenceCheckpoint(path)
    wanted = network_variables(gan, trainable_only)
    if scopes is not None:
        wanted = {n: v for n, v in wanted.items() if n.split("/", 1)[0] in scopes}
    missing_scopes = sorted({n.split("/", 1)[0] for n in wanted} - {
        n.split("/", 1)[0] for n in ckpt.shapes})
    if missing_scopes:
        raise CheckpointError(
            f"{path}: has no {', '.join(s + '/' for s in missing_scopes)} variables; "
            "it is not a checkpoint of the networks this run needs (a Stage-I checkpoint "
            "cannot initialise Stage-II networks, and vice versa).")
    filled = ckpt.load(wanted)

    loaded_state = False
    if optimizer_state:
        for optimizer, scope, slot_names, power_suffix in gan.reference_optimizer_layout():
            variables = {n: v for n, v in wanted.items()
                         if n.startswith(scope + "/") and v.trainable}
            if variables and ckpt.load_adam_state(optimizer, variables, slot_names, power_suffix):
                loaded_state = True
        if "global_step" in ckpt.shapes:
            gan.global_step.assign(int(ckpt.tensor("global_step")))
    counter = ckpt.counter or 0
    gan.counter.assign(counter)
    used = set(filled)
    unused = [n for n in ckpt.unused_model_variables(used)
              if scopes is None or n.split("/", 1)[0] in scopes]
    if trainable_only:
        unused = [n for n in unused if not n.endswith(("/mean", "/variance"))]
    return ImportReport(path, filled, [], unused, loaded_state, counter)
